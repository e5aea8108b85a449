"""The demo seed's guest profiles say what a rebuild from the guests' history would (issue 20):
in particular the card's visits in the last 30 days, counted from whenever it is read, not
from when the seed ran (they used to stay as seeded until the guest's next visit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from server.counter.model import RECENT_VISITS_MAX, habits_of, histogram_from
from server.seed.demo import GUESTS, _id
from tests.conftest import Demo


async def test_seeded_profiles_match_a_rebuild_from_history(demo: Demo, services: Any) -> None:
    seeded = [_id("guest", n) for n in range(1, GUESTS + 1)]
    async with services.db.connection() as conn:
        profiles = {
            r["guest_id"]: r
            for r in await conn.fetch(
                "SELECT * FROM guest_profiles WHERE guest_id = ANY($1::uuid[])", seeded
            )
        }
        visits: dict[Any, list[tuple[datetime, str]]] = {}
        for r in await conn.fetch(
            "SELECT o.guest_id, o.created_at, l.timezone FROM orders o"
            " JOIN locations l ON l.id = o.location_id"
            " WHERE o.guest_id = ANY($1::uuid[]) AND o.status = 'completed'"
            " ORDER BY o.created_at",
            seeded,
        ):
            visits.setdefault(r["guest_id"], []).append((r["created_at"], r["timezone"]))
    now = datetime.now(UTC)
    checked = 0
    for guest_id in seeded:
        row, history = profiles[guest_id], visits.get(guest_id, [])
        if row["visits_total"] != len(history):
            continue  # another test completed an order of this guest since the seed
        checked += 1
        times = [at for at, _ in history]
        # The card's visits_30d, read now and on later days before the next visit.
        for later in (0, 1, 10, 29, 31):
            moment = now + timedelta(days=later)
            expected = sum(1 for at in times if moment - timedelta(days=30) < at <= moment)
            assert habits_of(row, moment).visits_30d == expected, (guest_id, later)
        # The histograms the next visit folds onto: the latest visits in local time.
        tz = ZoneInfo(history[-1][1]) if history else UTC
        weekdays, hours = histogram_from(
            at.astimezone(tz) for at in times[-RECENT_VISITS_MAX * 5 :]
        )
        assert (tuple(row["weekday_counts"]), tuple(row["hour_counts"])) == (weekdays, hours)
        assert row["last_visit_at"] == (times[-1] if times else None)
    assert checked > GUESTS * 0.9
