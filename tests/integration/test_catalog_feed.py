"""A menu change made in one process reaches the others' menu caches through Redis pub/sub,
and an app whose change feed is running shuts down when asked."""

from __future__ import annotations

import asyncio
from typing import Any

from server.app import create_app
from server.catalog.service import CATALOG_CHANNEL
from server.lifespan import lifespan
from server.settings import Settings
from tests.conftest import Demo


async def test_another_process_drops_a_changed_menu(
    settings: Settings, services: Any, demo: Demo
) -> None:
    station = demo.locations["station"]
    shift_lead = services.tokens.verify(demo.staff["shift_lead"])
    before_other = await _listening(services)
    other = create_app(settings)
    async with lifespan(other):
        theirs = other.state.services.catalog
        before = await theirs.menu(station)
        item_id = next(i for i, item in before.items.items() if item.available)
        await _until_listening(services, before_other + 1)
        await services.catalog.set_availability(shift_lead, station, item_id, False)
        try:
            for _ in range(100):
                if not (await theirs.menu(station)).items[item_id].available:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the other process kept serving the stale menu")
        finally:
            await services.catalog.set_availability(shift_lead, station, item_id, True)


async def test_an_app_stopped_while_its_feed_connects_shuts_down(settings: Settings) -> None:
    # Stop right after start-up, at whichever step the feed has reached: a cancellation that
    # redis-py's connect swallowed (Python 3.11) used to leave the shutdown waiting for ever.
    # The bound turns that hang into a failure rather than a stuck CI run; it is not a speed
    # check (twelve start-ups take a few seconds).
    async with asyncio.timeout(120):
        for turns in range(12):
            app = create_app(settings)
            async with lifespan(app):
                for _ in range(turns):
                    await asyncio.sleep(0)


async def _listening(services: Any) -> int:
    """How many change feeds (apps in this test session) listen on the channel."""
    [(_, count)] = await services.gate.client.pubsub_numsub(CATALOG_CHANNEL)
    return int(count)


async def _until_listening(services: Any, feeds: int) -> None:
    for _ in range(250):
        if await _listening(services) >= feeds:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the other app's change feed did not subscribe")
