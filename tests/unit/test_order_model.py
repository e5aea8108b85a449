"""Pricing, discounts, the points cap and earning: pure rules, no fixtures."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from server.catalog.model import Location, MenuIndex, PricedItem, PricedModifier
from server.infra.problems import Problem
from server.loyalty.model import Program, Tier, allocate
from server.orders.model import Promo, discount_for, price_lines, quote
from shared import contract

PROGRAM = Program(
    point_value_minor=1,
    earn_per_100_minor=5,
    max_points_share_pct=30,
    tiers=[Tier(name="Bronze"), Tier(name="Gold", min_points=100, multiplier_pct=150)],
)
LARGE = PricedModifier(uuid.uuid4(), "size", "Large", 60)
SMALL = PricedModifier(uuid.uuid4(), "size", "Small", -40)
OAT = PricedModifier(uuid.uuid4(), "milk", "Oat", 40)
LATTE = PricedItem(
    uuid.uuid4(), "LAT", "Latte", 400, True, True, {m.id: m for m in (LARGE, SMALL, OAT)}
)
GIFT = PricedItem(uuid.uuid4(), "GC", "Gift card", 2500, False, True)
GONE = PricedItem(uuid.uuid4(), "SOU", "Soup", 600, True, False)
LOCATION = Location(uuid.uuid4(), uuid.uuid4(), "Test", "", "UTC", {}, 5, 5, 10)
INDEX = MenuIndex(
    LOCATION,
    "EUR",
    {i.id: i for i in (LATTE, GIFT, GONE)},
    contract.Menu(location_id=LOCATION.id, currency="EUR", categories=[]),
)


def line(item: PricedItem, quantity: int = 1, *mods: PricedModifier) -> contract.OrderLineIn:
    return contract.OrderLineIn(
        item_id=item.id, quantity=quantity, modifier_ids=[m.id for m in mods]
    )


def test_lines_are_priced_from_the_menu_with_modifiers() -> None:
    [priced] = price_lines(INDEX, [line(LATTE, 2, LARGE, OAT)], 50)
    assert priced.unit_price_minor == 500 and priced.gross_minor == 1000
    assert priced.modifier_names == ["Large", "Oat"]


@pytest.mark.parametrize(
    ("lines", "slug"),
    [
        ([contract.OrderLineIn(item_id=uuid.uuid4(), quantity=1)], "unknown-item"),
        ([line(GONE)], "item-unavailable"),
        ([line(LATTE, 0)], "invalid-quantity"),
        ([line(LATTE, 51)], "invalid-quantity"),
        ([line(LATTE, 1, LARGE, SMALL)], "invalid-modifier"),
        ([line(GIFT, 1, OAT)], "invalid-modifier"),
    ],
)
def test_bad_lines_are_refused(lines: list[contract.OrderLineIn], slug: str) -> None:
    with pytest.raises(Problem) as refused:
        price_lines(INDEX, lines, 50)
    assert refused.value.slug == slug


def test_points_are_capped_and_earning_skips_points_and_excluded_lines() -> None:
    lines = price_lines(INDEX, [line(LATTE, 2), line(GIFT)], 50)
    q = quote(PROGRAM, PROGRAM.tiers[0], lines, discount_minor=0, points_to_spend=300)
    assert q.subtotal_minor == 3300 and q.max_points == 990
    assert q.amount_due_minor == 3000
    assert sum(ln.points_spent for ln in q.lines) == 300
    latte_paid = q.lines[0].paid_minor
    assert q.points_to_earn == latte_paid * 5 // 100  # gift card and points part earn nothing
    assert q.lines[1].points_earned == 0
    with pytest.raises(Problem) as refused:
        quote(PROGRAM, PROGRAM.tiers[0], price_lines(INDEX, [line(LATTE)], 50), 0, 121)
    assert refused.value.slug == "points-over-cap"


@pytest.mark.parametrize("prices", [[15, 15], [5, 100], [19, 21, 7], [9, 9, 9, 9]])
def test_a_point_worth_more_than_a_cent_never_pays_more_than_a_line_costs(
    prices: list[int],
) -> None:
    """With a point worth 10 minor units, two lines of 15 can take one point each, not the
    three that 30 would suggest: the third landed on a line as a second point (20 > 15) and
    left it paid at -5."""
    program = Program(point_value_minor=10, earn_per_100_minor=5, max_points_share_pct=100)
    items = [
        PricedItem(uuid.uuid4(), f"I{n}", f"Item {n}", p, True, True) for n, p in enumerate(prices)
    ]
    index = MenuIndex(LOCATION, "EUR", {i.id: i for i in items}, INDEX.menu)
    cap = sum(p // 10 for p in prices)
    for points in range(cap + 1):
        q = quote(
            program, program.tiers[0], price_lines(index, [line(i) for i in items], 50), 0, points
        )
        assert q.max_points == cap
        assert all(ln.paid_minor >= 0 for ln in q.lines), [ln.paid_minor for ln in q.lines]
        assert sum(ln.paid_minor for ln in q.lines) == q.amount_due_minor
    with pytest.raises(Problem) as refused:
        quote(
            program, program.tiers[0], price_lines(index, [line(i) for i in items], 50), 0, cap + 1
        )
    assert refused.value.slug == "points-over-cap"


def test_tier_multiplier_applies_to_earning() -> None:
    lines = price_lines(INDEX, [line(LATTE, 5)], 50)
    assert quote(PROGRAM, PROGRAM.tiers[1], lines, 0, 0).points_to_earn == 2000 * 5 * 150 // 10_000


def test_discount_lowers_the_cap_and_is_split_over_lines_exactly() -> None:
    lines = price_lines(INDEX, [line(LATTE, 1), line(LATTE, 2, OAT)], 50)
    q = quote(PROGRAM, PROGRAM.tiers[0], lines, discount_minor=101, points_to_spend=0)
    assert sum(ln.discount_minor for ln in q.lines) == 101
    assert q.max_points == (1280 - 101) * 30 // 100


def test_promo_validity_and_kinds() -> None:
    now = datetime.now(UTC)
    percent = Promo(
        uuid.uuid4(), "P", "percent", 10, now - timedelta(days=1), now + timedelta(days=1), 1, None
    )
    fixed = Promo(
        uuid.uuid4(), "F", "fixed", 500, now - timedelta(days=1), now + timedelta(days=1), 1, None
    )
    assert discount_for(percent, 1234, now) == 123
    assert discount_for(fixed, 300, now) == 300
    with pytest.raises(Problem) as refused:
        discount_for(percent, 1000, now + timedelta(days=2))
    assert refused.value.slug == "promo-expired"


@pytest.mark.parametrize(
    ("total", "weights"), [(100, [1, 1, 1]), (7, [5, 0, 3]), (0, [1, 2]), (999, [333, 1, 10_000])]
)
def test_allocate_is_exact_and_proportional(total: int, weights: list[int]) -> None:
    shares = allocate(total, weights)
    assert sum(shares) == total
    assert all(share == 0 for share, w in zip(shares, weights, strict=True) if w == 0)
    assert all(
        abs(share - total * w / sum(weights)) < 1 for share, w in zip(shares, weights, strict=True)
    )
