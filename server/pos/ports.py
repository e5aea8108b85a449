"""What the vendor endpoints and the till's order feed need from receipt intake (pos-in's
half of the POS work), named here as small protocols so each half builds alone.

The integrator binds them: the signature guard (DESIGN §10) provides the ``till`` dependency
(pos-in's ``Till`` has these attributes), and the ``pos_intake`` dependency adapts the intake
service (pos-in's ``Intake.take`` answers the ReceiptOut as JSON bytes).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable
from uuid import UUID

from shared.pos import ReceiptIn, ReceiptOut

__all__ = ["ReceiptIntake", "SignedIntegration"]


# runtime_checkable: Litestar checks a dependency's value against its annotation.
@runtime_checkable
class SignedIntegration(Protocol):
    """The integration whose key signed the request being served."""

    @property
    def integration_id(self) -> UUID: ...

    @property
    def brand_id(self) -> UUID: ...

    @property
    def location_id(self) -> UUID: ...

    @property
    def vendor_store_id(self) -> str | None:
        """The vendor's id of the integration's store, when its admin named one."""
        ...


@runtime_checkable
class ReceiptIntake(Protocol):
    async def ingest(self, integration: SignedIntegration, receipt: ReceiptIn) -> ReceiptOut:
        """Store one receipt idempotently on (integration, external_id) and earn or reverse
        its points (DESIGN §10); raises a Problem for what it refuses."""
        ...

    async def currency_of(self, integration: SignedIntegration) -> str:
        """The brand's ISO 4217 currency (Loyverse receipts do not carry one)."""
        ...
