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
from litestar.di import NamedDependency

from server.infra.problems import Problem
from server.pos.ports import ReceiptIntake, SignedIntegration
from server.pos.vendors import loyverse, square
from server.pos.vendors.money import VendorPayloadError, decode
from shared.pos import ReceiptOut

__all__ = ["VendorReceiptsController"]


def _refuse(exc: VendorPayloadError) -> Problem:
    return Problem(422, "vendor-payload-invalid", str(exc))


def _require_store(till: SignedIntegration, vendor: str, stores: set[str]) -> None:
    """422 ``vendor-store-mismatch`` for a payload from another store of the vendor account
    than the one the integration stands for (when its admin named one)."""
    expected = till.vendor_store_id
    others = sorted(stores - {expected}) if expected else []
    if others:
        raise Problem(
            422,
            "vendor-store-mismatch",
            f"this integration takes {vendor} store {expected!r}, not {', '.join(others)!r};"
            " send each store's receipts with its own integration's key",
        )


class VendorReceiptsController(Controller):
    """Signed like every till request: the router in server/app.py guards these routes with
    ``requires_till``, which provides ``till``."""

    path = "/v1/pos/vendors"
    tags = ["pos"]

    @post("/square/receipts", status_code=201)
    async def square_order(
        self,
        request: Request[Any, Any, Any],
        till: NamedDependency[SignedIntegration],
        pos_intake: NamedDependency[ReceiptIntake],
    ) -> ReceiptOut:
        """A Square ``Order`` (bare or ``{"order": …}``), its tenders and returns, as one
        receipt. 422 ``vendor-payload-invalid`` when it cannot be read as one."""
        try:
            body = decode(await request.body())
            store = square.store_of(body)
            _require_store(till, "Square", {store} if store else set())
            receipt = square.order_to_receipt(
                body, location_id=till.location_id, received_at=datetime.now(UTC)
            )
        except VendorPayloadError as exc:
            raise _refuse(exc) from None
        return await pos_intake.ingest(till, receipt)

    @post("/loyverse/receipts", status_code=201)
    async def loyverse_receipts(
        self,
        request: Request[Any, Any, Any],
        till: NamedDependency[SignedIntegration],
        pos_intake: NamedDependency[ReceiptIntake],
    ) -> ReceiptOut | list[ReceiptOut]:
        """A Loyverse receipt (one answer) or a ``receipts.update`` envelope (one answer per
        receipt, in order). Every receipt is adapted before any is stored, so a malformed one
        refuses the whole envelope with 422 and stores nothing; Loyverse then redelivers it."""
        currency = await pos_intake.currency_of(till)
        try:
            body = decode(await request.body())
            _require_store(till, "Loyverse", loyverse.stores_of(body))
            receipts = loyverse.receipts_of(body, location_id=till.location_id, currency=currency)
        except VendorPayloadError as exc:
            raise _refuse(exc) from None
        answers = [await pos_intake.ingest(till, r) for r in receipts]
        return answers if isinstance(body, dict) and "receipts" in body else answers[0]
