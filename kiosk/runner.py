"""An asyncio loop on a background thread, so network calls never block the UI thread.

The UI submits coroutines; results come back through ``deliver`` (in the app that is
``Clock.schedule_once``), so callbacks always run on the UI thread. Kivy-free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["AsyncRunner"]

T = TypeVar("T")
log = logging.getLogger("kiosk.runner")


class AsyncRunner:
    """Owns one event loop in a daemon thread from :meth:`start` to :meth:`stop`."""

    def __init__(self, deliver: Callable[[Callable[[], None]], None]) -> None:
        self._deliver = deliver
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kiosk-net", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        """Start the loop thread (idempotent)."""
        if not self._thread.is_alive():
            self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the future is completed on the loop's thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        on_done: Callable[[T], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> concurrent.futures.Future[T]:
        """Run ``coro`` and hand its result to ``on_done`` on the UI thread.

        An unexpected exception is logged and handed to ``on_error`` (on the UI thread), never
        raised into the UI: the session layer already turns expected failures into a Notice.
        """
        future = self.submit(coro)

        def finished(f: concurrent.futures.Future[T]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("background call failed", exc_info=exc)
                if on_error is not None:
                    self._deliver(lambda: on_error(exc))
                return
            if on_done is not None:
                result = f.result()
                self._deliver(lambda: on_done(result))

        future.add_done_callback(finished)
        return future

    def to_ui(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the UI thread (for listeners called from the loop)."""
        self._deliver(fn)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop and join its thread (idempotent)."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout_s)
        if not self.loop.is_running():
            self.loop.close()
