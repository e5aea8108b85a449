"""What the vendor endpoints and the till's order feed need from receipt intake (pos-in's
half of the POS work), named here as small protocols so each half builds alone.

The integrator binds them: the signature guard (DESIGN §10) provides a ``SignedIntegration``
as the ``pos_integration`` dependency, and the intake service is the ``pos_intake``
dependency.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from shared.pos import ReceiptIn, ReceiptOut

__all__ = ["ReceiptIntake", "SignedIntegration"]


class SignedIntegration(Protocol):
    """The integration whose key signed the request being served."""

    @property
    def integration_id(self) -> UUID: ...

    @property
    def location_id(self) -> UUID: ...

    @property
    def currency(self) -> str:
        """The brand's ISO 4217 currency (Loyverse receipts do not carry one)."""
        ...


class ReceiptIntake(Protocol):
    async def ingest(self, integration: SignedIntegration, receipt: ReceiptIn) -> ReceiptOut:
        """Store one receipt idempotently on (integration, external_id) and earn or reverse
        its points (DESIGN §10); raises a Problem for what it refuses."""
        ...
