"""Pure order rules: pricing from the menu, discounts, the points cap, what is earned, and the
status machine. No I/O: every function here is tested without fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

from server.catalog.model import MenuIndex
from server.infra.problems import Problem
from server.loyalty.model import Program, Tier, allocate, earn_points, points_cap
from shared import contract

__all__ = [
    "CANCELLABLE_BY_GUEST",
    "CANCELLABLE_BY_STAFF",
    "STAFF_TRANSITIONS",
    "PricedLine",
    "Promo",
    "Quote",
    "discount_for",
    "draft_order",
    "price_lines",
    "quote",
    "split_earning",
]

# Staff move an order forward one step at a time (DESIGN §5).
STAFF_TRANSITIONS: dict[str, str] = {
    "placed": "accepted",
    "accepted": "preparing",
    "preparing": "ready",
    "ready": "completed",
}
CANCELLABLE_BY_GUEST = frozenset({"awaiting_payment", "placed"})
CANCELLABLE_BY_STAFF = frozenset({"awaiting_payment", "placed", "accepted"})


@dataclass(frozen=True, slots=True)
class Promo:
    id: UUID
    code: str
    kind: Literal["percent", "fixed"]
    value: int
    valid_from: datetime
    valid_until: datetime
    per_guest_limit: int
    total_limit: int | None


@dataclass(slots=True)
class PricedLine:
    item_id: UUID
    sku: str
    name: str
    quantity: int
    unit_price_minor: int
    modifier_ids: list[UUID]
    modifier_names: list[str]
    earns_points: bool
    discount_minor: int = 0
    points_spent: int = 0
    paid_minor: int = 0
    points_earned: int = 0

    @property
    def gross_minor(self) -> int:
        return self.unit_price_minor * self.quantity


@dataclass(slots=True)
class Quote:
    lines: list[PricedLine]
    subtotal_minor: int
    discount_minor: int
    points_spent: int
    points_value_minor: int
    amount_due_minor: int
    points_to_earn: int
    max_points: int = field(default=0)


def price_lines(
    index: MenuIndex, lines: list[contract.OrderLineIn], max_quantity: int
) -> list[PricedLine]:
    """Price every line from the menu; client-sent prices never reach here.

    Refuses an unknown or unavailable item, a quantity outside 1..max_quantity, and a modifier
    that does not belong to the item or repeats a group.
    """
    priced = []
    for number, line in enumerate(lines):
        item = index.items.get(line.item_id)
        if item is None:
            raise Problem(
                422, "unknown-item", f"lines[{number}]: no item {line.item_id} on this menu"
            )
        if not item.available:
            raise Problem(
                422, "item-unavailable", f"lines[{number}]: {item.name} is not available here today"
            )
        if not 1 <= line.quantity <= max_quantity:
            raise Problem(
                422,
                "invalid-quantity",
                f"lines[{number}].quantity must be between 1 and {max_quantity}, got {line.quantity}",
            )
        unit = item.price_minor
        names, groups = [], set()
        for modifier_id in line.modifier_ids:
            modifier = item.modifiers.get(modifier_id)
            if modifier is None or modifier.group in groups:
                raise Problem(
                    422,
                    "invalid-modifier",
                    f"lines[{number}]: modifier {modifier_id} does not apply to {item.name}"
                    " (or repeats a choice)",
                )
            groups.add(modifier.group)
            names.append(modifier.name)
            unit += modifier.price_delta_minor
        priced.append(
            PricedLine(
                item_id=item.id,
                sku=item.sku,
                name=item.name,
                quantity=line.quantity,
                unit_price_minor=max(unit, 0),
                modifier_ids=list(line.modifier_ids),
                modifier_names=names,
                earns_points=item.earns_points,
            )
        )
    return priced


def discount_for(promo: Promo, subtotal_minor: int, now: datetime) -> int:
    """The discount a valid promo gives; refuses one outside its validity window."""
    if not promo.valid_from <= now < promo.valid_until:
        raise Problem(422, "promo-expired", f"promo code {promo.code} is not valid now")
    if promo.kind == "percent":
        return subtotal_minor * promo.value // 100
    return min(promo.value, subtotal_minor)


def quote(
    program: Program,
    tier: Tier,
    lines: list[PricedLine],
    discount_minor: int,
    points_to_spend: int,
) -> Quote:
    """Split discount and points over lines and compute what is due and what will be earned.

    Refuses points above the brand's cap (``max_points_share_pct`` of the order after
    discounts). Points earned are on net money paid, on earning lines only.
    """
    subtotal = sum(line.gross_minor for line in lines)
    discount_minor = min(discount_minor, subtotal)
    for line, share in zip(
        lines, allocate(discount_minor, [ln.gross_minor for ln in lines]), strict=True
    ):
        line.discount_minor = share
    payable = subtotal - discount_minor
    payables = [line.gross_minor - line.discount_minor for line in lines]
    # What each line can still take in whole points. Split by money, a point worth more than
    # a minor unit could land on a line that costs less than it (paid_minor below zero), and
    # the order's cap can exceed what its lines can take one by one.
    room = [line_payable // program.point_value_minor for line_payable in payables]
    max_points = min(points_cap(program, payable), sum(room))
    if points_to_spend > max_points:
        raise Problem(
            422,
            "points-over-cap",
            f"at most {max_points} points can pay for this order "
            f"({program.max_points_share_pct}% of {payable} minor units)",
            max_points=max_points,
        )
    for line, points, line_payable in zip(
        lines, allocate(points_to_spend, room), payables, strict=True
    ):
        line.points_spent = points
        line.paid_minor = line_payable - points * program.point_value_minor
    points_value = points_to_spend * program.point_value_minor
    shares = split_earning(program, tier, [(line.paid_minor, line.earns_points) for line in lines])
    for line, earned in zip(lines, shares, strict=True):
        line.points_earned = earned
    return Quote(
        lines=lines,
        subtotal_minor=subtotal,
        discount_minor=discount_minor,
        points_spent=points_to_spend,
        points_value_minor=points_value,
        amount_due_minor=payable - points_value,
        points_to_earn=sum(shares),
        max_points=max_points,
    )


def draft_order(
    order_id: UUID,
    guest_id: UUID,
    index: MenuIndex,
    priced: Quote,
    pickup_at: datetime,
    now: datetime,
    payment_window: timedelta,
) -> contract.Order:
    """The order a checkout creates, as the guest will see it (line ids minted here).

    Nothing to pay (a full discount) means no payment step: the order is placed at once.
    """
    placed = priced.amount_due_minor == 0
    return contract.Order(
        id=order_id, status="placed" if placed else "awaiting_payment",
        location_id=index.location.id, guest_id=guest_id, currency=index.currency,
        subtotal_minor=priced.subtotal_minor, discount_minor=priced.discount_minor,
        points_spent=priced.points_spent, points_value_minor=priced.points_value_minor,
        amount_due_minor=priced.amount_due_minor, points_to_earn=priced.points_to_earn,
        lines=[
            contract.OrderLine(
                id=uuid.uuid4(), item_id=line.item_id, sku=line.sku, name=line.name,
                quantity=line.quantity, unit_price_minor=line.unit_price_minor,
                modifiers=line.modifier_names, gross_minor=line.gross_minor,
                discount_minor=line.discount_minor, points_spent=line.points_spent,
                paid_minor=line.paid_minor,
            )
            for line in priced.lines
        ],
        pickup_at=pickup_at, created_at=now,
        payment_expires_at=None if placed else now + payment_window,
    )  # fmt: skip


def split_earning(program: Program, tier: Tier, lines: Sequence[tuple[int, bool]]) -> list[int]:
    """Points each line earns, from (paid_minor, earns_points) per line.

    The order earns on the net money paid by its earning lines; the total is split over those
    lines by what each paid, so refunding a line reverses exactly its share.
    """
    weights = [paid if earns else 0 for paid, earns in lines]
    return allocate(earn_points(program, sum(weights), tier), weights)
