"""``POST /v1/pos/vendors/{square,loyverse}/receipts``: a vendor's own object, adapted and
handed to receipt intake, so the answer, the signature and the idempotency are those of
``POST /v1/pos/receipts`` (DESIGN §10).

The raw body is read here (not decoded by Litestar) because money must be parsed as Decimal,
never float, and because the signature was computed over those exact bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, post

from server.infra.problems import Problem
from server.pos.ports import ReceiptIntake, SignedIntegration
from server.pos.vendors import loyverse, square
from server.pos.vendors.money import VendorPayloadError, decode
from shared.pos import ReceiptOut

__all__ = ["VendorReceiptsController"]


def _refuse(exc: VendorPayloadError) -> Problem:
    return Problem(422, "vendor-payload-invalid", str(exc))


class VendorReceiptsController(Controller):
    path = "/v1/pos/vendors"
    tags = ["pos"]

    @post("/square/receipts", status_code=200)
    async def square_order(
        self,
        request: Request[Any, Any, Any],
        pos_integration: SignedIntegration,
        pos_intake: ReceiptIntake,
    ) -> ReceiptOut:
        """A Square ``Order`` (bare or ``{"order": …}``), its tenders and returns, as one
        receipt. 422 ``vendor-payload-invalid`` when it cannot be read as one."""
        try:
            receipt = square.order_to_receipt(
                decode(await request.body()),
                location_id=pos_integration.location_id,
                received_at=datetime.now(UTC),
            )
        except VendorPayloadError as exc:
            raise _refuse(exc) from None
        return await pos_intake.ingest(pos_integration, receipt)

    @post("/loyverse/receipts", status_code=200)
    async def loyverse_receipts(
        self,
        request: Request[Any, Any, Any],
        pos_integration: SignedIntegration,
        pos_intake: ReceiptIntake,
    ) -> ReceiptOut | list[ReceiptOut]:
        """A Loyverse receipt (one answer) or a ``receipts.update`` envelope (one answer per
        receipt, in order). Every receipt is adapted before any is stored, so a malformed one
        refuses the whole envelope with 422 and stores nothing; Loyverse then redelivers it."""
        try:
            body = decode(await request.body())
            receipts = loyverse.receipts_of(
                body, location_id=pos_integration.location_id, currency=pos_integration.currency
            )
        except VendorPayloadError as exc:
            raise _refuse(exc) from None
        answers = [await pos_intake.ingest(pos_integration, r) for r in receipts]
        return answers if isinstance(body, dict) and "receipts" in body else answers[0]
