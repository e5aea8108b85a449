"""Square ``Order`` → our receipt (DESIGN §10). Pure: no I/O, no clock.

Square's money is already in minor units (``{"amount": 1599, "currency": "USD"}``) and its
quantities are strings ("1.5"). A line's ``total_discount_money`` already holds its share of
order-level discounts (Square apportions them into ``applied_discounts``); whatever an order
discounts beyond what its lines carry is spread over the lines here, so the receipt's
discounts always add up to the order's. An order with ``returns[]`` is a refund of the order
its returns name (``source_order_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

import msgspec

from server.pos.vendors.money import VendorPayloadError, checked, field, quantity_of, spread
from shared.pos import ReceiptGuest, ReceiptIn, ReceiptLineIn, ReceiptPaymentIn, Tender

__all__ = ["order_to_receipt"]

_TENDERS: dict[str, Tender] = {
    "CARD": "card",
    "THIRD_PARTY_CARD": "card",
    "CASH": "cash",
    "SQUARE_GIFT_CARD": "gift_card",
}
_NAME_MAX = 200


def store_of(body: Any) -> str | None:
    """The Square location the order (bare or ``{"order": …}``) was taken at, if it says."""
    order = body.get("order", body) if isinstance(body, Mapping) else None
    store = order.get("location_id") if isinstance(order, Mapping) else None
    return store if isinstance(store, str) else None


def order_to_receipt(body: Any, *, location_id: UUID, received_at: datetime) -> ReceiptIn:
    """Map a Square ``Order`` (bare or ``{"order": …}``) to a :class:`ReceiptIn`.

    ``received_at`` stands in for the sale time only when the order carries none
    (``closed_at``, then ``created_at``). Refuses with :class:`VendorPayloadError`: a body that
    is not an order, a draft, money in more than one currency, a return not linked to its
    sale, returns from several sales, or an exchange (returns and new sales in one order).
    """
    order = body.get("order", body) if isinstance(body, Mapping) else body
    if not isinstance(order, Mapping) or not ("line_items" in order or "returns" in order):
        raise VendorPayloadError("expected a Square Order with line_items or returns")
    if order.get("state") == "DRAFT":
        raise VendorPayloadError("order.state DRAFT: a draft order is not a sale")
    currency = _currency(order)
    returns = order.get("returns") or []
    refund_of = None
    if returns:
        if order.get("line_items"):
            raise VendorPayloadError(
                "order has both returns and line_items (an exchange); send the return and "
                "the new sale as separate orders"
            )
        refund_of = _source_order(returns)
        raw_lines = [item for ret in returns for item in ret.get("return_line_items") or []]
        gross_key = "gross_return_money"
    else:
        raw_lines = order.get("line_items") or []
        gross_key = "gross_sales_money"
    voided = order.get("state") == "CANCELED"
    lines = [_line(item, f"line {i}", gross_key, voided) for i, item in enumerate(raw_lines)]
    if not lines:
        raise VendorPayloadError("the order has no line items")
    lines = _with_order_discount(lines, order, returns)
    customer = order.get("customer_id") or next(
        (t["customer_id"] for t in order.get("tenders") or [] if t.get("customer_id")), None
    )
    external_id = order.get("id") or order.get("reference_id")
    if not external_id:
        raise VendorPayloadError("order.id is required")
    return checked(
        ReceiptIn(
            external_id=str(external_id),
            location_id=location_id,
            occurred_at=_occurred_at(order, received_at),
            lines=lines,
            payments=_payments(order, bool(returns)),
            refund_of=refund_of,
            guest=ReceiptGuest(pos_customer_id=str(customer)) if customer else None,
            currency=currency,
        )
    )


def _amount(money: Any, where: str) -> int:
    if money is None:
        return 0
    amount = field(money, "amount", where)
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise VendorPayloadError(f"{where}.amount must be an integer of minor units")
    return amount


def _currency(order: Mapping[str, Any]) -> str | None:
    """The one currency of every Money in the order (Square never mixes; we refuse it)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if "amount" in node and isinstance(node.get("currency"), str):
                found.add(node["currency"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(order)
    if len(found) > 1:
        raise VendorPayloadError(f"money in more than one currency: {sorted(found)}")
    return found.pop() if found else None


def _source_order(returns: list[Any]) -> str:
    sources = {ret.get("source_order_id") for ret in returns if isinstance(ret, Mapping)}
    if None in sources or "" in sources:
        raise VendorPayloadError(
            "returns[].source_order_id is required: an unlinked return cannot reverse points"
        )
    if len(sources) != 1:
        raise VendorPayloadError("returns from more than one sale in one order")
    return str(sources.pop())


def _line(item: Any, where: str, gross_key: str, voided: bool) -> ReceiptLineIn:
    quantity = quantity_of(field(item, "quantity", where), f"{where}.quantity")
    # A unit is the variation's price plus its modifiers' (Square prices modifiers per unit
    # of the line, times their own quantity).
    unit = Decimal(_amount(item.get("base_price_money"), f"{where}.base_price_money"))
    modifiers = item.get("modifiers") or item.get("return_modifiers") or []
    for j, modifier in enumerate(modifiers):
        price = _amount(modifier.get("base_price_money"), f"{where}.modifiers[{j}]")
        unit += price * quantity_of(modifier.get("quantity", "1"), f"{where}.modifiers[{j}]")
    if unit == 0 and item.get(gross_key) is not None:  # a custom amount carries only a total
        unit = _amount(item[gross_key], f"{where}.{gross_key}") / quantity
    name = str(item.get("name") or "Custom amount")
    if item.get("variation_name"):
        name = f"{name} ({item['variation_name']})"
    return ReceiptLineIn(
        name=name[:_NAME_MAX],
        quantity=quantity,
        unit_price_minor=int(unit.quantize(Decimal(1), rounding=ROUND_HALF_UP)),
        discount_minor=_amount(item.get("total_discount_money"), f"{where}.total_discount_money"),
        tax_minor=_amount(item.get("total_tax_money"), f"{where}.total_tax_money"),
        sku=item.get("catalog_object_id"),
        voided=voided,
        gift_card=item.get("item_type") == "GIFT_CARD",
    )


def _with_order_discount(
    lines: list[ReceiptLineIn], order: Mapping[str, Any], returns: list[Any]
) -> list[ReceiptLineIn]:
    """Spread over the lines any order discount their own ``total_discount_money`` lacks."""
    if returns:
        total = sum(
            _amount((ret.get("return_amounts") or {}).get("discount_money"), "return_amounts")
            for ret in returns
        )
    else:
        total = _amount(order.get("total_discount_money"), "order.total_discount_money")
    missing = total - sum(line.discount_minor for line in lines)
    if missing <= 0:
        return lines
    weights = [
        max(0, int(line.quantity * line.unit_price_minor) - line.discount_minor) for line in lines
    ]
    shares = spread(missing, weights)
    return [
        msgspec.structs.replace(line, discount_minor=line.discount_minor + share)
        for line, share in zip(lines, shares, strict=True)
    ]


def _payments(order: Mapping[str, Any], refund: bool) -> list[ReceiptPaymentIn]:
    if refund:
        # A Refund names the tender it went back to by id only, not its type.
        return [
            ReceiptPaymentIn(tender="other", amount_minor=_amount(r.get("amount_money"), "refund"))
            for r in order.get("refunds") or []
        ]
    return [
        ReceiptPaymentIn(
            tender=_TENDERS.get(str(t.get("type")), "other"),
            amount_minor=_amount(t.get("amount_money"), f"tenders[{i}].amount_money"),
        )
        for i, t in enumerate(order.get("tenders") or [])
        if t.get("type") != "NO_SALE"
    ]


def _occurred_at(order: Mapping[str, Any], received_at: datetime) -> datetime:
    stamp = order.get("closed_at") or order.get("created_at")
    if stamp is None:
        return received_at
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise VendorPayloadError(f"order time {stamp!r} is not an RFC 3339 time") from None
