"""'As soon as possible' checkouts (issue 20): an order without pickup_at takes the earliest
slot of the rest of the location's day that still has room, and names it.

Each test makes its own location of the demo brand (the database is shared): three 15-minute
slots a day at 12:00, 12:15 and 12:30 local time, two orders each, in a fixed-offset timezone
chosen so that it is about 08:00 there now, whatever the time of the run. Every case runs
through the checkout lane and through Litestar's handler (Settings.checkout_lane off).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.catalog.model import BOOKING_HORIZON, WEEKDAYS
from server.seed.demo import PROGRAM
from server.settings import Settings
from tests.api.helpers import ledger_state, menu_items, place
from tests.conftest import Client, Demo, GuestHandle, app_client, sign_in

PER_SLOT = 2
WELCOME = PROGRAM.welcome_bonus_points


@pytest.fixture(params=["lane", "litestar"])
async def checkout(
    request: pytest.FixtureRequest,
    client: Client,
    settings: Settings,
    notifier: RecordingNotifier,
) -> AsyncIterator[Client]:
    """The app with the checkout lane, or the same app without it (both over one database)."""
    if request.param == "lane":
        yield client
        return
    replaced = msgspec.structs.replace(settings, checkout_lane=False)
    async with app_client(replaced, notifier) as without_lane:
        yield without_lane


@dataclass(frozen=True)
class Counter:
    id: uuid.UUID
    tz: ZoneInfo
    slots: list[datetime]  # today's three slot starts (UTC)

    def tomorrow(self, slot: int = 0) -> datetime:
        return self.slots[slot] + timedelta(days=1)  # a fixed offset: no DST


@pytest.fixture
async def counter(services: Any, demo: Demo) -> Counter:
    now = datetime.now(UTC)
    offset = 8 - now.hour  # hours east of UTC that make it 08:xx there
    offset = offset + 24 if offset < -12 else offset
    # POSIX-style names count the other way: Etc/GMT-5 is five hours east of UTC.
    name = "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
    tz = ZoneInfo(name)
    hours = {day: [["12:00", "12:45"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    location_id = uuid.uuid4()
    async with services.db.transaction() as conn:
        await conn.execute(
            "INSERT INTO locations (id, brand_id, slug, name, timezone, opening_hours,"
            " lead_time_min, slot_minutes, orders_per_slot) VALUES ($1, $2, $3, $4, $5, $6,"
            " 10, 15, $7)",
            location_id,
            demo.brand_id,
            f"asap-{location_id}",
            "ASAP test counter",
            name,
            hours,
            PER_SLOT,
        )
    noon = now.astimezone(tz).replace(hour=12, minute=0, second=0, microsecond=0)
    slots = [(noon + timedelta(minutes=15 * k)).astimezone(UTC) for k in range(3)]
    return Counter(location_id, tz, slots)


def order(counter: Counter, item_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "location_id": str(counter.id),
        "lines": [{"item_id": item_id, "quantity": 1}],
        **extra,
    }


def at(response: Any) -> datetime:
    assert response.status_code == 201, response.text
    return datetime.fromisoformat(response.json()["pickup_at"])


async def slot_counts(services: Any, counter: Counter) -> dict[datetime, int]:
    async with services.db.connection() as conn:
        rows = await conn.fetch(
            "SELECT slot_start, count(*) AS n FROM orders WHERE location_id = $1"
            " AND status <> 'cancelled' GROUP BY slot_start",
            counter.id,
        )
    return {r["slot_start"]: r["n"] for r in rows}


async def test_an_asap_order_takes_the_next_slot_with_room_and_says_which(
    checkout: Client, guest: GuestHandle, counter: Counter, services: Any
) -> None:
    croissant = (await menu_items(checkout, counter.id))["CRO"]["id"]
    first, second, third = counter.slots
    for _ in range(PER_SLOT):
        assert at(await place(checkout, guest, order(counter, croissant))) == first

    # The earliest slot is full: the next order without pickup_at lands in the following one,
    # and the response, a retry of it and the order itself all name that slot.
    key = str(uuid.uuid4())
    moved = await place(checkout, guest, order(counter, croissant), key=key)
    assert at(moved) == second
    again = await place(checkout, guest, order(counter, croissant), key=key)
    assert again.status_code == 201 and again.content == moved.content
    stored = await checkout.get(f"/v1/orders/{moved.json()['id']}", headers=guest.headers)
    assert datetime.fromisoformat(stored.json()["pickup_at"]) == second

    # Asking for the full slot by name is still refused, as before.
    explicit = await place(checkout, guest, order(counter, croissant, pickup_at=first.isoformat()))
    assert explicit.status_code == 409, explicit.text
    assert explicit.json()["type"].endswith("/slot-full")
    assert "next_available_at" not in explicit.json()

    for expected in (second, third, third):
        assert at(await place(checkout, guest, order(counter, croissant))) == expected
    assert await slot_counts(services, counter) == {first: 2, second: 2, third: 2}

    # The whole day is full: refused, and the problem names tomorrow's first slot.
    spend = order(counter, croissant, points_to_spend=10)
    full = await place(checkout, guest, spend)
    assert full.status_code == 409, full.text
    assert full.headers["content-type"].startswith("application/problem+json")
    problem = full.json()
    assert problem["type"].endswith("/slot-full")
    assert datetime.fromisoformat(problem["next_available_at"]) == counter.tomorrow()
    assert await slot_counts(services, counter) == {first: 2, second: 2, third: 2}
    assert await ledger_state(services, guest.id) == (WELCOME, 0)  # nothing held


async def test_racing_guests_never_overfill_a_slot(
    checkout: Client, client: Client, notifier: RecordingNotifier, counter: Counter, services: Any
) -> None:
    """More guests than places order at once: each place goes to exactly one of them, the
    losers of a slot's last place move on to a later slot, and the rest are refused."""
    croissant = (await menu_items(checkout, counter.id))["CRO"]["id"]
    guests = [await sign_in(client, notifier) for _ in range(3 * PER_SLOT + 3)]
    answers = await asyncio.gather(*(place(checkout, g, order(counter, croissant)) for g in guests))
    placed = [at(a) for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert sorted(placed) == sorted(counter.slots * PER_SLOT)
    assert len(refused) == 3
    for answer in refused:
        assert answer.status_code == 409, answer.text
        assert answer.json()["type"].endswith("/slot-full")
    assert await slot_counts(services, counter) == dict.fromkeys(counter.slots, PER_SLOT)
    async with services.db.connection() as conn:
        counted = await conn.fetch(
            "SELECT slot_start, orders FROM slot_counts WHERE location_id = $1", counter.id
        )
    assert {r["slot_start"]: r["orders"] for r in counted} == dict.fromkeys(counter.slots, PER_SLOT)


async def test_no_room_within_the_booking_horizon_names_no_time(
    checkout: Client, guest: GuestHandle, counter: Counter, services: Any
) -> None:
    croissant = (await menu_items(checkout, counter.id))["CRO"]["id"]
    every_slot = [
        slot + timedelta(days=day)
        for day in range(BOOKING_HORIZON.days + 1)
        for slot in counter.slots
    ]
    async with services.db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO slot_counts (location_id, slot_start, orders) VALUES ($1, $2, $3)",
            [(counter.id, slot, PER_SLOT) for slot in every_slot],
        )
    full = await place(checkout, guest, order(counter, croissant))
    assert full.status_code == 409, full.text
    assert full.json()["type"].endswith("/slot-full")
    assert full.json()["next_available_at"] is None


async def test_closed_for_the_rest_of_today_names_the_next_opening(
    checkout: Client, guest: GuestHandle, counter: Counter, services: Any
) -> None:
    today = WEEKDAYS[counter.slots[0].astimezone(counter.tz).weekday()]
    async with services.db.transaction() as conn:  # before the menu is first read (cached)
        await conn.execute(
            "UPDATE locations SET opening_hours = opening_hours - $2::text WHERE id = $1",
            counter.id,
            today,
        )
    croissant = (await menu_items(checkout, counter.id))["CRO"]["id"]
    closed = await place(checkout, guest, order(counter, croissant))
    assert closed.status_code == 422, closed.text
    assert closed.json()["type"].endswith("/location-closed")
    assert datetime.fromisoformat(closed.json()["next_available_at"]) == counter.tomorrow()
