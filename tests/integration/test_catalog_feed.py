"""A menu change made in one process reaches the others' menu caches through Redis pub/sub,
and an app whose change feed is running shuts down when asked."""

from __future__ import annotations

import asyncio
from typing import Any

from server.app import create_app
from server.lifespan import lifespan
from server.settings import Settings
from tests.conftest import Demo


async def test_another_process_drops_a_changed_menu(
    settings: Settings, services: Any, demo: Demo
) -> None:
    station = demo.locations["station"]
    other = create_app(settings)
    async with lifespan(other):
        theirs = other.state.services.catalog
        before = await theirs.menu(station)
        item_id = next(i for i, item in before.items.items() if item.available)
        await asyncio.sleep(0.2)  # the other app's feed has subscribed
        await services.catalog.set_availability(station, item_id, False)
        try:
            for _ in range(100):
                if not (await theirs.menu(station)).items[item_id].available:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the other process kept serving the stale menu")
        finally:
            await services.catalog.set_availability(station, item_id, True)


async def test_an_app_stopped_while_its_feed_connects_shuts_down(settings: Settings) -> None:
    # Stop right after start-up, at whichever step the feed has reached: a cancellation that
    # redis-py's connect swallowed (Python 3.11) used to leave the shutdown waiting for ever.
    for turns in range(12):
        app = create_app(settings)
        async with lifespan(app):
            for _ in range(turns):
                await asyncio.sleep(0)
