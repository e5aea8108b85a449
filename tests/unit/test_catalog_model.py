from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from server.catalog.model import (
    LocationInfo,
    earliest_pickup,
    is_open,
    local_date,
    slot_start,
    slots_on,
)

HOURS = {"mon": [["07:00", "12:00"], ["13:00", "19:00"]], "sat": [["00:00", "24:00"]]}
CAFE = LocationInfo(uuid.uuid4(), uuid.uuid4(), "Café", "", "Europe/Berlin", HOURS, 10, 15, 20)


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
