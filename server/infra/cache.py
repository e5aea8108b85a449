"""A per-process cache for rarely changing rows (menus, programs, locations): one load at a time.

A plain "reload when the TTL runs out" cache makes every request in flight at that moment
load the same value with its own pooled connection: at a morning rush that is a burst of
identical queries every TTL, each holding a connection the checkouts need. This one keeps the
burst to one load:

* fresh: the value, as is;
* stale (older than ``ttl_s``): the value, as is, while one background task reloads it. A TTL
  already allows that much staleness; ``forget`` is how a change is seen at once;
* missing (never loaded, or forgotten): the first caller's load, which later callers await.

A load started before ``forget`` does not store its (possibly old) value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from server.infra.db import NestedAcquire, holds_connection

__all__ = ["SingleFlightCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger(__name__)


class SingleFlightCache(Generic[K, V]):
    def __init__(self, load: Callable[[K], Awaitable[V]], ttl_s: float, name: str) -> None:
        """``load(key)`` reads the value from the database; ``name`` is for the log."""
        self._load = load
        self._ttl_s = ttl_s
        self._name = name
        self._values: dict[K, tuple[float, V]] = {}
        self._loads: dict[K, asyncio.Task[V]] = {}
        self._generation = 0

    async def get(self, key: K) -> V:
        """The value for ``key``; raises what a load raises when there is no value yet.

        The load runs in a task of its own, so a caller that is cancelled does not cancel the
        load others wait for. A caller that holds a pooled connection must not wait here:
        the load needs a connection of its own, and were every connection held by such
        waiters, none would come. It takes :meth:`fresh`, or else loads the value on the
        connection it holds and stores it with :meth:`put`.
        """
        cached = self._values.get(key)
        if cached is not None:
            if cached[0] <= time.monotonic() and key not in self._loads:
                self._start(key, background=True)
            return cached[1]
        if holds_connection():
            raise NestedAcquire(
                f"{self._name} cache: a task that holds a pooled connection waited for a load "
                "that needs another one (that can deadlock the pool); pass the connection"
            )
        task = self._loads.get(key) or self._start(key, background=False)
        return await asyncio.shield(task)

    def fresh(self, key: K) -> V | None:
        """The value if it is fresh, without loading it."""
        cached = self._values.get(key)
        return None if cached is None or cached[0] <= time.monotonic() else cached[1]

    def put(self, key: K, value: V) -> None:
        """Store a value a caller loaded itself (say, on the connection it holds)."""
        self._values[key] = (time.monotonic() + self._ttl_s, value)

    def forget(self, key: K | None = None) -> None:
        """Drop one value (or all): the next ``get`` loads it afresh."""
        self._generation += 1
        if key is None:
            self._values.clear()
            self._loads.clear()
        else:
            self._values.pop(key, None)
            self._loads.pop(key, None)

    def age_s(self, key: K) -> float:
        """Seconds since ``key`` was loaded; infinite if it never was."""
        cached = self._values.get(key)
        if cached is None:
            return float("inf")
        return time.monotonic() - (cached[0] - self._ttl_s)

    def _start(self, key: K, background: bool) -> asyncio.Task[V]:
        task = asyncio.create_task(self._run(key, self._generation))
        self._loads[key] = task
        task.add_done_callback(lambda done: self._finished(key, done, background))
        return task

    async def _run(self, key: K, generation: int) -> V:
        try:
            value = await self._load(key)
        except Exception:
            if generation == self._generation:
                # A stale value that could not be refreshed is not served on: the next get
                # loads in the foreground and its caller sees why (a location that is gone,
                # a database that is busy).
                self._values.pop(key, None)
            raise
        if generation == self._generation:
            self.put(key, value)
        return value

    def _finished(self, key: K, task: asyncio.Task[V], background: bool) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        if task.cancelled():
            return
        error = task.exception()  # retrieved here: nobody awaits a background refresh
        if error is not None and background:
            log.warning("%s cache: refreshing %s failed: %r", self._name, key, error)
