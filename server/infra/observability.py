"""Request ids, logging and metrics.

Every response carries ``x-request-id`` (the caller's, if it sent a sane one) and every log
line written while handling the request carries the same id. Every HTTP request is counted
and timed per route template for Prometheus (``/metrics``), and an exception nothing else
handled is answered as a problem+json 500 and counted as one. ``serve`` logs JSON lines for
machines; ``dev`` logs readable lines for people.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import ipaddress
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from litestar import Controller, Response, get
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from server.infra.openapi import problems
from server.infra.problems import Problem, internal_error, send_problem

__all__ = [
    "MetricsController",
    "RequestTelemetry",
    "configure_logging",
    "count_unhandled",
    "request_id",
    "scraper_allowed",
]

log = logging.getLogger("regulars.http")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_HEADER = b"x-request-id"
_MAX_ID_LEN = 64

# The names and labels Litestar's Prometheus plugin used (PrometheusConfig(app_name="regulars",
# prefix="regulars", group_path=True)), so dashboards keep working. Created once per process.
_LABELS = ("method", "path", "status_code", "app_name")
_REQUESTS = Counter("regulars_requests_total", "Total requests", _LABELS)
_ERRORS = Counter("regulars_requests_error_total", "Requests answered with a 5xx", _LABELS)
_DURATION = Histogram("regulars_request_duration_seconds", "Request duration", _LABELS)
# Summed over the live worker processes under `serve --workers N` (server/infra/multiprocess_metrics.py).
_IN_PROGRESS = Gauge(
    "regulars_requests_in_progress",
    "Requests being handled",
    ("method", "path", "app_name"),
    multiprocess_mode="livesum",
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
        status = 0  # until a response starts
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
            except Exception:
                # Litestar renders what a handler raises; this is what escaped even that.
                log.exception("unhandled error on %s %s", method, scope["path"])
                if not status:
                    await send_problem(send_with_id, internal_error(), scope["path"])
                status = status or 500
            finally:
                status = status or 500  # cancelled, or the app sent nothing at all
                in_progress.dec()
                _metric(_DURATION, method, path, status).observe(time.perf_counter() - started)
                _metric(_REQUESTS, method, path, status).inc()
                if status >= 500:
                    _metric(_ERRORS, method, path, status).inc()


def count_unhandled(scope: HTTPScope) -> None:
    """Count a 500 for an error that escaped before :class:`RequestTelemetry` saw the request
    (the layers in front of Litestar's router), so an alert on 5xx fires for it too."""
    path = scope.get("path_template", "unmatched")
    _metric(_REQUESTS, scope["method"], path, 500).inc()
    _metric(_ERRORS, scope["method"], path, 500).inc()


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def scraper_allowed(
    token: str | None,
    networks: Sequence[IPNetwork],
    client_host: str | None,
    authorization: str | None,
) -> bool:
    """Whether a request may read /metrics: from an address in ``networks`` (any address when
    there are none) and, when ``token`` is set, with ``Authorization: Bearer <token>``."""
    if token is not None:
        expected = f"Bearer {token}".encode()
        if not hmac.compare_digest((authorization or "").encode(), expected):
            return False
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(client_host or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


async def requires_scraper(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """The guard of /metrics: ``Settings.metrics_clients`` and ``Settings.metrics_token``."""
    settings = connection.app.state.settings
    client = connection.client.host if connection.client else None
    if not scraper_allowed(
        settings.metrics_token,
        settings.metrics_networks,
        client,
        connection.headers.get("authorization"),
    ):
        raise Problem(403, "scraper-only", "the metrics are for the configured scraper only")


class MetricsController(Controller):
    """Prometheus text for the scraper, and for no one else (see :func:`requires_scraper`)."""

    path = "/metrics"
    tags = ["ops"]
    guards = [requires_scraper]

    @get(media_type="text/plain", sync_to_thread=False, responses=problems(403))
    def metrics(self) -> Response[bytes]:
        """Every counter and histogram of this process (of all of them with a multiprocess
        directory), in Prometheus' text format."""
        registry = REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


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
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # logger.warning(..., extra={"fields": {...}})
            entry.update(fields)
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
