"""SingleFlightCache: one load per key at a time, stale values served while one refresh runs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.infra.cache import SingleFlightCache


class Source:
    """A load that counts its calls and finishes when the test says so."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = "v1"
        self.error: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def load(self, key: str) -> str:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return f"{key}:{self.value}"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_for_a_missing_value_share_one_load() -> None:
    source = Source()
    source.gate.clear()
    cache = SingleFlightCache(source.load, ttl_s=60, name="test")
    waiting = [asyncio.create_task(cache.get("menu")) for _ in range(20)]
    await settle()
    source.gate.set()
    assert await asyncio.gather(*waiting) == ["menu:v1"] * 20
    assert source.calls == 1
    assert await cache.get("menu") == "menu:v1"
    assert source.calls == 1  # fresh: no load
    assert await cache.get("other") == "other:v1"
    assert source.calls == 2  # keys load on their own


async def test_a_stale_value_is_served_while_one_refresh_runs() -> None:
    source = Source()
    cache = SingleFlightCache(source.load, ttl_s=0, name="test")  # stale as soon as loaded
    assert await cache.get("menu") == "menu:v1"
    source.value, source.gate = "v2", asyncio.Event()
    # Every request while the refresh runs gets the old value at once; one refresh runs.
    assert [await cache.get("menu") for _ in range(10)] == ["menu:v1"] * 10
    await settle()
    assert [await cache.get("menu") for _ in range(10)] == ["menu:v1"] * 10
    assert source.calls == 2
    source.gate.set()
    await settle()
    assert await cache.get("menu") == "menu:v2"


async def test_a_load_started_before_forget_does_not_store_its_value() -> None:
    source = Source()
    source.gate.clear()
    cache = SingleFlightCache(source.load, ttl_s=60, name="test")
    before = asyncio.create_task(cache.get("menu"))
    await settle()
    cache.forget("menu")  # the menu changed while it was being read
    source.value = "v2"
    source.gate.set()
    assert await before == "menu:v2"  # this test's source returns the new value anyway
    assert source.calls == 1
    # Whatever the old load read, the next request loads again.
    assert await cache.get("menu") == "menu:v2"
    assert source.calls == 2


async def test_a_failed_load_reaches_every_waiter_and_the_next_request_retries() -> None:
    source = Source()
    source.gate.clear()
    source.error = LookupError("no location")
    cache = SingleFlightCache(source.load, ttl_s=60, name="test")
    waiting = [asyncio.create_task(cache.get("menu")) for _ in range(3)]
    await settle()
    source.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(r) for r in results] == [LookupError] * 3
    assert source.calls == 1
    source.error = None
    assert await cache.get("menu") == "menu:v1"
    assert source.calls == 2


async def test_a_failed_refresh_drops_the_stale_value_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source()
    cache = SingleFlightCache(source.load, ttl_s=0, name="test")
    assert await cache.get("menu") == "menu:v1"
    source.error = LookupError("location deleted")
    with caplog.at_level(logging.WARNING, logger="server.infra.cache"):
        assert await cache.get("menu") == "menu:v1"  # stale, while the refresh fails
        await settle()
    assert "test cache: refreshing menu failed" in caplog.text
    # The next request does not get the old value again: it loads and sees the error.
    with pytest.raises(LookupError, match="location deleted"):
        await cache.get("menu")


async def test_a_cancelled_request_does_not_cancel_the_load_others_wait_for() -> None:
    source = Source()
    source.gate.clear()
    cache = SingleFlightCache(source.load, ttl_s=60, name="test")
    impatient = asyncio.create_task(cache.get("menu"))
    patient = asyncio.create_task(cache.get("menu"))
    await settle()
    impatient.cancel()
    await settle()
    source.gate.set()
    assert await patient == "menu:v1"
    assert impatient.cancelled()
    assert source.calls == 1


async def test_fresh_and_put_serve_callers_that_load_on_their_own_connection() -> None:
    source = Source()
    cache = SingleFlightCache(source.load, ttl_s=60, name="test")
    assert cache.fresh("menu") is None
    cache.put("menu", "loaded by the caller")
    assert cache.fresh("menu") == "loaded by the caller"
    assert await cache.get("menu") == "loaded by the caller"
    assert source.calls == 0
    stale = SingleFlightCache(source.load, ttl_s=0, name="test")
    stale.put("menu", "old")
    assert stale.fresh("menu") is None
