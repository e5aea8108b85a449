from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from server.loyalty.model import (
    AccountState,
    AccrualLimits,
    Lot,
    Program,
    Tier,
    accrual_over_limit,
    earn_in_order,
    earn_points,
    points_cap,
    remaining_lots,
    states_after,
    tier_for,
)
from server.loyalty.service import add_months

PROGRAM = Program(
    tiers=[
        Tier(name="Bronze"),
        Tier(name="Silver", min_points=500, multiplier_pct=125),
        Tier(name="Gold", min_points=2000, multiplier_pct=150),
    ]
)


def test_tiers_come_from_points_earned() -> None:
    assert tier_for(PROGRAM, 0)[0].name == "Bronze"
    assert [t.name if t else None for t in tier_for(PROGRAM, 500)] == ["Silver", "Gold"]
    assert tier_for(PROGRAM, 10_000) == (PROGRAM.tiers[2], None)


def test_earning_rounds_down_and_never_earns_on_nothing() -> None:
    assert earn_points(PROGRAM, 1999, PROGRAM.tiers[0]) == 99
    assert earn_points(PROGRAM, 1000, PROGRAM.tiers[2]) == 75
    assert earn_points(PROGRAM, 0, PROGRAM.tiers[2]) == 0
    assert earn_points(PROGRAM, -50, PROGRAM.tiers[2]) == 0


def test_cap_is_the_brands_share_in_whole_points() -> None:
    assert points_cap(PROGRAM, 1000) == 300
    assert points_cap(PROGRAM, 999) == 299
    assert points_cap(PROGRAM, 0) == 0


def test_lots_are_consumed_oldest_first() -> None:
    now = datetime.now(UTC)
    lots = [
        Lot(100, now + timedelta(days=30)),
        Lot(50, now + timedelta(days=1)),
        Lot(70, now + timedelta(days=90)),
    ]
    left = remaining_lots(lots, consumed=80)
    assert [(lot.points, lot.expires_at) for lot in left] == [
        (70, now + timedelta(days=30)),
        (70, now + timedelta(days=90)),
    ]
    assert remaining_lots(lots, consumed=1000) == []


@pytest.mark.parametrize(
    "rules",
    [
        {"point_value_minor": 0},
        {"max_points_share_pct": 120},
        {"tiers": [{"name": "A", "min_points": 10}]},
        {"tiers": [{"name": "A"}, {"name": "B", "min_points": 0}]},
        {"unknown": 1},
    ],
)
def test_bad_programs_are_refused(rules: dict[str, object]) -> None:
    with pytest.raises((msgspec.ValidationError, ValueError)):
        msgspec.convert(rules, Program)


def test_add_months_clamps_to_month_end() -> None:
    assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2026, 11, 15, tzinfo=UTC), 12) == datetime(2027, 11, 15, tzinfo=UTC)


def test_accrual_limits_name_the_limit_passed() -> None:
    limits = AccrualLimits(max_points=500, per_staff_per_hour=2, per_guest_per_day=1)
    assert accrual_over_limit(limits, 500, 1, 0) is None
    assert accrual_over_limit(limits, 501, 0, 0) == "max_points"
    assert accrual_over_limit(limits, 10, 2, 0) == "per_staff_per_hour"
    assert accrual_over_limit(limits, 10, 0, 1) == "per_guest_per_day"
    assert accrual_over_limit(None, 10**9, 10**6, 10**6) is None
    assert accrual_over_limit(AccrualLimits(), 10**9, 10**6, 10**6) is None


def test_earn_in_order_counts_the_earlier_earnings_of_the_same_account_only() -> None:
    program = Program(
        earn_per_100_minor=5,
        tiers=[Tier(name="Bronze"), Tier(name="Silver", min_points=500, multiplier_pct=200)],
    )
    a, b = uuid.uuid4(), uuid.uuid4()
    paid = [(a, 4000), (b, 4000), (a, 8000), (a, 4000), (b, 0), (b, 4000)]
    # a: 200, then 400 (600 in the window: Silver), then 400 at x2; b stays at Bronze.
    assert earn_in_order(program, paid, {a: 0, b: 100}) == [200, 200, 400, 400, 0, 200]


def test_states_after_gives_each_credit_its_own_version_and_balance() -> None:
    final = AccountState(posted=1000, pending=30, version=12)
    assert states_after(final, [100, 200, 300]) == [
        AccountState(posted=500, pending=30, version=10),
        AccountState(posted=700, pending=30, version=11),
        AccountState(posted=1000, pending=30, version=12),
    ]
