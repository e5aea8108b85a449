"""Loyverse receipt → our receipt (DESIGN §10). Pure: no I/O, no clock.

Loyverse sends money as decimal numbers in major units (34.48) with no currency on the receipt
(it is the merchant's), so the caller says the currency and amounts become minor units by its
exponent. A ``receipts.update`` webhook carries several receipts in ``receipts[]``. A line's
``total_discount`` already holds its share of receipt-level discounts; whatever
``total_discount`` of the receipt exceeds the lines' sum is spread over them here. A refund is
``receipt_type: "REFUND"`` with ``refund_for`` naming the sale's receipt number; its amounts
may be signed, so a refund's magnitudes are taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

import msgspec

from server.pos.vendors.money import (
    VendorPayloadError,
    checked,
    field,
    major_to_minor,
    quantity_of,
    spread,
)
from shared.pos import ReceiptGuest, ReceiptIn, ReceiptLineIn, ReceiptPaymentIn, Tender

__all__ = ["receipts_of"]

_TENDERS: dict[str, Tender] = {"CASH": "cash", "NONINTEGRATEDCARD": "card"}
# Integrated card terminals Loyverse names by provider.
_CARD_PROVIDERS = {"SUMUP", "IZETTLE", "TYRO", "WORLDPAY", "YOCO", "SQUARE", "VIVAWALLET"}
_NAME_MAX = 200


def stores_of(body: Any) -> set[str]:
    """The Loyverse stores the receipt (or each receipt of an envelope) names."""
    if not isinstance(body, Mapping):
        return set()
    receipts = body.get("receipts") if "receipts" in body else [body]
    if not isinstance(receipts, list):
        return set()
    return {
        r["store_id"]
        for r in receipts
        if isinstance(r, Mapping) and isinstance(r.get("store_id"), str)
    }


def receipts_of(body: Any, *, location_id: UUID, currency: str) -> list[ReceiptIn]:
    """Map a Loyverse receipt, or a ``receipts.update`` envelope of several, to receipts.

    Refuses with :class:`VendorPayloadError` (naming the receipt and field): a body that is
    neither, an envelope of another event type, a refund without ``refund_for``, or amounts
    that do not fit a receipt.
    """
    if not isinstance(body, Mapping):
        raise VendorPayloadError("expected a Loyverse receipt or a receipts.update envelope")
    if "receipts" in body:
        if body.get("type", "receipts.update") != "receipts.update":
            raise VendorPayloadError(f"webhook type {body.get('type')!r} is not receipts.update")
        receipts = body["receipts"]
        if not isinstance(receipts, list) or not receipts:
            raise VendorPayloadError("receipts must be a non-empty list")
        return [
            _receipt(r, f"receipts[{i}]", location_id, currency) for i, r in enumerate(receipts)
        ]
    return [_receipt(body, "receipt", location_id, currency)]


def _receipt(raw: Any, where: str, location_id: UUID, currency: str) -> ReceiptIn:
    number = str(field(raw, "receipt_number", where))
    where = f"{where} {number}"
    kind = raw.get("receipt_type", "SALE")
    if kind not in ("SALE", "REFUND"):
        raise VendorPayloadError(f"{where}: receipt_type {kind!r} is not SALE or REFUND")
    refund = kind == "REFUND"
    refund_of = raw.get("refund_for")
    if refund and not refund_of:
        raise VendorPayloadError(f"{where}: a REFUND needs refund_for (the sale it returns)")
    voided = raw.get("cancelled_at") is not None
    items = field(raw, "line_items", where)
    if not isinstance(items, list):
        raise VendorPayloadError(f"{where}.line_items must be a list")
    lines = [
        _line(item, f"{where}.line_items[{i}]", currency, refund, voided)
        for i, item in enumerate(items)
    ]
    total = _minor(raw.get("total_discount", 0), currency, f"{where}.total_discount", refund)
    lines = _with_receipt_discount(lines, total)
    customer = raw.get("customer_id")
    return checked(
        ReceiptIn(
            external_id=number,
            location_id=location_id,
            occurred_at=_time(raw.get("receipt_date") or raw.get("created_at"), where),
            lines=lines,
            payments=[
                _payment(p, f"{where}.payments[{i}]", currency, refund)
                for i, p in enumerate(raw.get("payments") or [])
            ],
            refund_of=str(refund_of) if refund else None,
            guest=ReceiptGuest(pos_customer_id=str(customer)) if customer else None,
            currency=currency,
        )
    )


def _minor(value: object, currency: str, where: str, refund: bool) -> int:
    amount = major_to_minor(value, currency, where)
    if amount < 0 and not refund:
        raise VendorPayloadError(f"{where}: a sale cannot carry a negative amount")
    return abs(amount)


def _line(item: Any, where: str, currency: str, refund: bool, voided: bool) -> ReceiptLineIn:
    raw_quantity = field(item, "quantity", where)
    if refund and isinstance(raw_quantity, int | Decimal) and raw_quantity < 0:
        raw_quantity = -raw_quantity  # a refund's lines may be signed
    quantity = quantity_of(raw_quantity, f"{where}.quantity")
    # gross_total_money is (price + modifiers) x quantity: the unit price that keeps it.
    gross = item.get("gross_total_money")
    if gross is not None:
        unit = Decimal(_minor(gross, currency, f"{where}.gross_total_money", refund)) / quantity
    else:
        unit = Decimal(_minor(field(item, "price", where), currency, f"{where}.price", refund))
    tax = sum(
        _minor(t.get("money_amount", 0), currency, f"{where}.line_taxes[{j}]", refund)
        for j, t in enumerate(item.get("line_taxes") or [])
    )
    name = str(item.get("item_name") or "Item")
    if item.get("variant_name"):
        name = f"{name} ({item['variant_name']})"
    return ReceiptLineIn(
        name=name[:_NAME_MAX],
        quantity=quantity,
        unit_price_minor=int(unit.quantize(Decimal(1), rounding=ROUND_HALF_UP)),
        discount_minor=_minor(
            item.get("total_discount", 0), currency, f"{where}.total_discount", refund
        ),
        tax_minor=tax,
        sku=item.get("sku") or None,
        voided=voided,
    )


def _with_receipt_discount(lines: list[ReceiptLineIn], total: int) -> list[ReceiptLineIn]:
    missing = total - sum(line.discount_minor for line in lines)
    if missing <= 0:
        return lines
    weights = [
        max(0, int(line.quantity * line.unit_price_minor) - line.discount_minor) for line in lines
    ]
    return [
        msgspec.structs.replace(line, discount_minor=line.discount_minor + share)
        for line, share in zip(lines, spread(missing, weights), strict=True)
    ]


def _payment(raw: Any, where: str, currency: str, refund: bool) -> ReceiptPaymentIn:
    kind = str(raw.get("type") or "OTHER").upper()
    tender = _TENDERS.get(kind) or ("card" if kind in _CARD_PROVIDERS else "other")
    amount = _minor(field(raw, "money_amount", where), currency, f"{where}.money_amount", refund)
    return ReceiptPaymentIn(tender=tender, amount_minor=amount)


def _time(stamp: object, where: str) -> datetime:
    if not isinstance(stamp, str):
        raise VendorPayloadError(f"{where}.receipt_date is required")
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise VendorPayloadError(
            f"{where}.receipt_date {stamp!r} is not an RFC 3339 time"
        ) from None
    if moment.tzinfo is None:
        raise VendorPayloadError(f"{where}.receipt_date {stamp!r} has no UTC offset")
    return moment
