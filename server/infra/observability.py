"""Request ids, logging and metrics.

Every response carries ``x-request-id`` (the caller's, if it sent a sane one) and every log
line written while handling the request carries the same id. Every HTTP request is counted
and timed per route template for Prometheus (``/metrics``). ``serve`` logs JSON lines for
machines; ``dev`` logs readable lines for people.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

__all__ = ["RequestTelemetry", "configure_logging", "request_id"]

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_HEADER = b"x-request-id"
_MAX_ID_LEN = 64

# The names and labels Litestar's Prometheus plugin used (PrometheusConfig(app_name="regulars",
# prefix="regulars", group_path=True)), so dashboards keep working. Created once per process.
_LABELS = ("method", "path", "status_code", "app_name")
_REQUESTS = Counter("regulars_requests_total", "Total requests", _LABELS)
_ERRORS = Counter("regulars_requests_error_total", "Requests answered with a 5xx", _LABELS)
_DURATION = Histogram("regulars_request_duration_seconds", "Request duration", _LABELS)
_IN_PROGRESS = Gauge(
    "regulars_requests_in_progress", "Requests being handled", ("method", "path", "app_name")
)


class RequestTelemetry:
    """Request id, access count and latency in one pure ASGI middleware.

    Litestar's Prometheus middleware cost ~10 % of a checkout's CPU (issue 5: it builds a
    Request and label dicts, and resolves each metric's labels on every call); this one wraps
    ``send`` once and keeps the labelled metrics it has seen.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.WEBSOCKET:
            with _request_id(scope):
                await self.app(scope, receive, send)
            return
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        # The route template, never the raw path: one series per route, not per order id.
        method, path = scope["method"], scope.get("path_template", "unmatched")
        status = 500  # unless a response starts
        started = time.perf_counter()
        in_progress = _metric(_IN_PROGRESS, method, path)
        in_progress.inc()
        with _request_id(scope) as header:

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", []), header]
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            finally:
                in_progress.dec()
                _metric(_DURATION, method, path, status).observe(time.perf_counter() - started)
                _metric(_REQUESTS, method, path, status).inc()
                if status >= 500:
                    _metric(_ERRORS, method, path, status).inc()


@contextlib.contextmanager
def _request_id(scope: Scope) -> Iterator[tuple[bytes, bytes]]:
    """The caller's request id if it sent a sane one, else a new one, for the log lines
    written meanwhile; yields the response header that carries it."""
    rid = _incoming_id(scope) or uuid.uuid4().hex
    token = request_id.set(rid)
    try:
        yield (_HEADER, rid.encode())
    finally:
        request_id.reset(token)


_children: dict[tuple[object, ...], Any] = {}


def _metric(family: Counter | Gauge | Histogram, *labels: str | int) -> Any:
    """``family.labels(*labels, "regulars")``, remembered: label lookup is the costly part."""
    key = (family, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = family.labels(*labels, "regulars")
    return child


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == _HEADER:
            text = value.decode("latin-1")
            if 0 < len(text) <= _MAX_ID_LEN and text.replace("-", "").isalnum():
                return text
    return None


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class _JsonFormatter(logging.Formatter):
    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(entry).decode()


def configure_logging(fmt: str, level: str) -> None:
    """Install one handler on the root logger: JSON lines or readable text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
