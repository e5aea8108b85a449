"""Pure kiosk rules: code classification, scan-time bounds, masking, habits, profile folding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.counter.model import (
    RECENT_VISITS_MAX,
    Profile,
    Return,
    Visit,
    VisitItem,
    classify_code,
    fold_return,
    fold_visit,
    habits_of,
    histogram_from,
    scan_time_problem,
    sees_full_profile,
    usual_items,
)
from server.guests.model import display_name

NOW = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # a Monday
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("RG1:ABCDEFGHIJKLMNOP:123:ABCDEFGHIJ", ("qr", "RG1:ABCDEFGHIJKLMNOP:123:ABCDEFGHIJ")),
        ("rg1:abc", ("qr", "RG1:ABC")),
        ("0000 0000 0001", ("card", "000000000001")),
        ("0000-0000-0001", ("card", "000000000001")),
        ("+49 151 2345678", ("phone", "+49 151 2345678")),
        ("030 901820", ("phone", "030 901820")),
        ("hello", None),
        ("12345", None),
        ("", None),
    ],
)
def test_classify_code(code: str, expected: object) -> None:
    assert classify_code(code) == expected


def test_scan_time_bounds() -> None:
    assert scan_time_problem(None, NOW, 24 * 3600, 120) is None
    assert scan_time_problem(NOW - timedelta(hours=23), NOW, 24 * 3600, 120) is None
    assert scan_time_problem(NOW + timedelta(seconds=30), NOW, 24 * 3600, 120) is None
    assert scan_time_problem(NOW - timedelta(hours=25), NOW, 24 * 3600, 120) is not None
    assert scan_time_problem(NOW + timedelta(hours=1), NOW, 24 * 3600, 120) is not None
    assert scan_time_problem(datetime(2026, 11, 23, 8, 0), NOW, 24 * 3600, 120) is not None  # naive


def test_masking_by_role() -> None:
    assert display_name("Anna", "Schmidt", full=False) == "Anna S."
    assert display_name("Anna", "Schmidt", full=True) == "Anna Schmidt"
    assert display_name("Anna", "", full=False) == "Anna"
    assert display_name("", "Schmidt", full=False) == "S."
    assert display_name("", "", full=False) == "Guest"
    assert [sees_full_profile(r) for r in ("barista", "shift_lead", "manager", "admin")] == [
        False,
        False,
        True,
        True,
    ]


def test_usual_items_and_habits() -> None:
    item = uuid.uuid4()
    top = [{"item_id": str(item), "name": "Flat White", "count": 7, "price_minor": 400}]
    assert usual_items(top)[0].name == "Flat White"
    assert usual_items(top)[0].price_minor == 400
    row = {
        "visits_total": 12,
        "visits_30d": 4,
        "avg_ticket_minor": 520,
        "usual_weekday": 0,
        "usual_hour": 8,
        "last_visit_at": NOW - timedelta(days=2),
        "recent_visits": None,
    }
    habits = habits_of(row, NOW)
    assert (habits.usual_weekday, habits.usual_time, habits.visits_30d) == ("Monday", "08:00", 4)
    recent = [NOW - timedelta(days=40), NOW - timedelta(days=3)]
    assert habits_of({**row, "recent_visits": recent}, NOW).visits_30d == 1
    assert habits_of(None, NOW).visits_total == 0


def _visit(at: datetime, amount: int = 500, points: int = 25, *items: VisitItem) -> Visit:
    return Visit(
        at=at, local_at=at.astimezone(BERLIN), amount_minor=amount, points=points, items=items
    )


def test_fold_visit_moves_the_profile_forward() -> None:
    latte, cookie = uuid.uuid4(), uuid.uuid4()
    profile = Profile()
    for day in range(3):  # three Monday-ish mornings at 9 local
        at = NOW - timedelta(days=7 * day)
        profile = fold_visit(profile, _visit(at, 500, 25, VisitItem(latte, "Latte", 1, 410)), NOW)
    profile = fold_visit(
        profile,
        _visit(NOW - timedelta(days=45), 1000, 50, VisitItem(cookie, "Cookie", 2, 250)),
        NOW,
    )
    assert profile.visits_total == 4
    assert profile.spend_total_minor == 2500 and profile.avg_ticket_minor == 625
    assert profile.points_earned_12m == 125
    assert profile.usual_weekday == 0 and profile.usual_hour == 9
    assert profile.last_visit_at == NOW  # an older visit folded late does not move it back
    assert profile.visits_30d == 3  # the 45-day-old visit is outside the window
    assert [e["name"] for e in profile.top_items] == ["Latte", "Cookie"]
    assert profile.top_items[0]["count"] == 3


def test_fold_return_lowers_spend_points_and_items_but_not_the_visit() -> None:
    latte, cookie = uuid.uuid4(), uuid.uuid4()
    visit = _visit(
        NOW, 1320, 60, VisitItem(latte, "Latte", 2, 410), VisitItem(cookie, "Cookie", 2, 250)
    )
    profile = fold_visit(fold_visit(Profile(), _visit(NOW, 500, 25), NOW), visit, NOW)
    returned = fold_return(profile, Return(660, 30, (VisitItem(cookie, "Cookie", 2, 250),)))
    assert returned.spend_total_minor == 1820 - 660 and returned.avg_ticket_minor == 1160 // 2
    assert returned.points_earned_12m == 85 - 30
    assert [(e["name"], e["count"]) for e in returned.top_items] == [("Latte", 2)]
    assert (returned.visits_total, returned.recent_visits) == (2, profile.recent_visits)
    assert (returned.usual_weekday, returned.usual_hour) == (
        profile.usual_weekday,
        profile.usual_hour,
    )
    # More than the profile holds (a visit from before it was started): down to zero.
    emptied = fold_return(returned, Return(10_000, 1_000))
    assert (emptied.spend_total_minor, emptied.avg_ticket_minor, emptied.points_earned_12m) == (
        0,
        0,
        0,
    )
    assert fold_return(Profile(), Return(100, 5)).avg_ticket_minor == 0


def test_fold_visit_keeps_the_usual_on_a_tie_and_bounds_recent_visits() -> None:
    weekdays, hours = histogram_from([NOW.astimezone(BERLIN)])
    profile = Profile(usual_weekday=0, usual_hour=9, weekday_counts=weekdays, hour_counts=hours)
    tuesday_noon = NOW + timedelta(days=1, hours=3)
    folded = fold_visit(profile, _visit(tuesday_noon), tuesday_noon)
    assert (folded.usual_weekday, folded.usual_hour) == (0, 9)
    many = Profile()
    for minute in range(RECENT_VISITS_MAX + 10):
        many = fold_visit(many, _visit(NOW - timedelta(minutes=minute)), NOW)
    assert len(many.recent_visits) == RECENT_VISITS_MAX
