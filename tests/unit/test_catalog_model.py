from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from server.catalog.model import (
    Location,
    earliest_pickup,
    is_open,
    local_date,
    slot_runs_after_today,
    slot_runs_rest_of_day,
    slot_start,
    slots_on,
)

HOURS = {"mon": [["07:00", "12:00"], ["13:00", "19:00"]], "sat": [["00:00", "24:00"]]}
CAFE = Location(uuid.uuid4(), uuid.uuid4(), "Café", "", "Europe/Berlin", HOURS, 10, 15, 20)


def test_opening_hours_are_local_time() -> None:
    monday_0630_utc = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)  # 07:30 in Berlin
    assert is_open(CAFE, monday_0630_utc)
    assert not is_open(CAFE, datetime(2026, 11, 23, 11, 30, tzinfo=UTC))  # 12:30 lunch break
    assert not is_open(CAFE, datetime(2026, 11, 24, 8, 0, tzinfo=UTC))  # Tuesday: closed
    assert is_open(CAFE, datetime(2026, 11, 28, 22, 59, tzinfo=UTC))  # Saturday 23:59


def test_slots_align_and_respect_lead_time() -> None:
    at = datetime(2026, 11, 23, 7, 7, tzinfo=UTC)
    assert slot_start(CAFE, at) == datetime(2026, 11, 23, 7, 0, tzinfo=UTC)
    assert earliest_pickup(CAFE, at) == datetime(2026, 11, 23, 7, 30, tzinfo=UTC)


def test_a_day_of_slots() -> None:
    slots = slots_on(CAFE, datetime(2026, 11, 23, 12, tzinfo=UTC))
    assert len(slots) == (5 + 6) * 4
    assert slots[0] == datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def test_a_locations_today_is_its_own_not_utcs() -> None:
    # 23:30 UTC on Monday is 00:30 on Tuesday in Berlin (winter, UTC+1).
    assert local_date(CAFE, datetime(2026, 11, 23, 23, 30, tzinfo=UTC)) == date(2026, 11, 24)
    assert local_date(CAFE, datetime(2026, 11, 23, 22, 59, tzinfo=UTC)) == date(2026, 11, 23)


def test_the_rest_of_a_day_in_runs_is_the_days_open_slots_from_the_earliest_pickup() -> None:
    for now in (
        datetime(2026, 11, 22, 23, 30, tzinfo=UTC),  # Monday 00:30 in Berlin: before opening
        datetime(2026, 11, 23, 6, 7, tzinfo=UTC),  # 07:07: lead time pushes past 07:15
        datetime(2026, 11, 23, 10, 55, tzinfo=UTC),  # 11:55: the lunch break comes next
        datetime(2026, 11, 23, 17, 52, tzinfo=UTC),  # 18:52: nothing left today
        datetime(2026, 11, 28, 21, 0, tzinfo=UTC),  # Saturday 22:00, open until 24:00
    ):
        step = timedelta(minutes=CAFE.slot_minutes)
        expanded = [
            first + k * step
            for first, last in slot_runs_rest_of_day(CAFE, now)
            for k in range(int((last - first) / step) + 1)
        ]
        day = slots_on(CAFE, now)  # the location's day, not UTC's
        assert expanded == [s for s in day if s >= earliest_pickup(CAFE, now)], now


def test_an_order_just_before_midnight_goes_to_the_next_day_only_if_it_opens_at_once() -> None:
    step = timedelta(minutes=CAFE.slot_minutes)
    # Friday 23:52 in Berlin: the lead time ends on Saturday, open from 00:00.
    friday_late = datetime(2026, 11, 27, 22, 52, tzinfo=UTC)
    runs = slot_runs_rest_of_day(CAFE, friday_late)
    saturday = slots_on(CAFE, datetime(2026, 11, 28, 12, tzinfo=UTC))
    expanded = [f + k * step for f, last in runs for k in range(int((last - f) / step) + 1)]
    assert expanded == [s for s in saturday if s >= earliest_pickup(CAFE, friday_late)]
    assert expanded[0] == datetime(2026, 11, 27, 23, 15, tzinfo=UTC)  # Saturday 00:15
    # Saturday 23:55: Sunday is closed, so nothing "as soon as possible".
    assert slot_runs_rest_of_day(CAFE, datetime(2026, 11, 28, 22, 55, tzinfo=UTC)) == []
    # Around the clock: every minute of the evening has a slot to offer.
    always = Location(
        uuid.uuid4(), uuid.uuid4(), "Station", "", "Europe/Berlin",
        {day: [["00:00", "24:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        10, 15, 20,
    )  # fmt: skip
    for minute in range(0, 60):
        now = datetime(2026, 12, 5, 22, minute, tzinfo=UTC)  # 23:00-23:59 in Berlin
        first = slot_runs_rest_of_day(always, now)[0][0]
        assert first == earliest_pickup(always, now), now


def test_the_days_after_today_in_runs_are_their_open_slots() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)  # Sunday: closed; then Monday, Tuesday (closed)
    step = timedelta(minutes=CAFE.slot_minutes)
    expanded = [
        first + k * step
        for first, last in slot_runs_after_today(CAFE, now, 2)
        for k in range(int((last - first) / step) + 1)
    ]
    assert expanded == slots_on(CAFE, datetime(2026, 11, 23, 12, tzinfo=UTC))
