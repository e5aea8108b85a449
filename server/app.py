"""The composition root: ``create_app(settings)`` wires controllers, middleware and errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components
from litestar.types import ControllerRouterHandler

from server.auth.controller import AuthController
from server.auth.guards import BearerAuth
from server.auth.notifier import Notifier
from server.catalog.controller import CatalogController
from server.counter.controller import ROUTES as COUNTER_ROUTES
from server.guests.controller import MeController
from server.infra.client import client_address
from server.infra.http import Edge, strict_json_body
from server.infra.observability import MetricsController, RequestTelemetry
from server.infra.openapi import POS_SIGNED, SECURITY_SCHEMES, answer, document_problems
from server.infra.problems import exception_handlers
from server.lifespan import Services, lifespan
from server.loyalty.controller import AdjustmentsController
from server.orders.controller import MyOrdersController, OrdersController
from server.orders.lane import CheckoutLane
from server.pos.auth import requires_till, till_of
from server.pos.controller import RECEIPTS_BATCH
from server.pos.controller import ROUTES as POS_ROUTES
from server.pos.lane import ReceiptLane
from server.pos.vendors.controller import VendorReceiptsController
from server.pos.webhook_controller import PosOrdersFeedController, WebhookDeliveriesController
from server.settings import Settings
from server.staff.controller import DevicesController, StaffAuthController

__all__ = ["create_app"]


@get("/healthz", include_in_schema=False, tags=["ops"])
async def healthz() -> dict[str, str]:
    """Alive while the process lives."""
    return {"status": "ok"}


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "unavailable"]
    postgres: Literal["ok", "down"]
    redis: Literal["ok", "degraded"]


@get(
    "/readyz",
    tags=["ops"],
    responses={503: answer(Readiness, "PostgreSQL is down")},
)
async def readyz(state: State) -> Response[Readiness]:
    """Per-component readiness: 503 without PostgreSQL; Redis down is only 'degraded'."""
    services: Services = state.services
    postgres: Literal["ok", "down"] = "ok"
    try:
        async with asyncio.timeout(2):
            await services.db.fetch("SELECT 1")
    except Exception:
        postgres = "down"
    redis: Literal["ok", "degraded"] = "ok" if await services.gate.ping() else "degraded"
    body = Readiness(
        status="ok" if postgres == "ok" else "unavailable", postgres=postgres, redis=redis
    )
    return Response(content=body, status_code=200 if postgres == "ok" else 503)


def _service(name: str) -> Provide:
    def provide(state: State) -> Any:
        return getattr(state.services, name)

    return Provide(provide, sync_to_thread=False)


def _principal(request: Request[Any, Any, Any]) -> Any:
    return request.scope.get("user")


def _client_ip(request: Request[Any, Any, Any]) -> str:
    return client_address(request.scope, request.app.state.settings.trusted_proxies)


def _dependencies() -> dict[str, Provide]:
    """What the handlers ask for by name: the services, the caller, the signing till."""
    dependencies = {
        name: _service(name)
        for name in (
            "catalog",
            "loyalty",
            "orders",
            "guests",
            "auth",
            "settings",
            "staff",
            "locations",
            "desk",
            "counter_points",
            "live_queues",
            "pos_webhooks",
            "pos_integrations",
            "intake",
            "batch_intake",
            "tender",
            "claims",
        )
    }
    dependencies["principal"] = Provide(_principal, sync_to_thread=False)
    dependencies["client_ip"] = Provide(_client_ip, sync_to_thread=False)
    dependencies["till"] = Provide(till_of, sync_to_thread=False)
    dependencies["pos_intake"] = _service("intake")
    return dependencies


def _route_handlers() -> list[ControllerRouterHandler]:
    # The vendor receipts and the order feed are signed by a till like every POS route.
    signed_by_till = Router(
        path="/",
        route_handlers=[VendorReceiptsController, PosOrdersFeedController],
        guards=[requires_till],
        security=POS_SIGNED,
    )
    return [
        healthz,
        readyz,
        MetricsController,
        AuthController,
        CatalogController,
        MeController,
        OrdersController,
        MyOrdersController,
        AdjustmentsController,
        WebhookDeliveriesController,
        StaffAuthController,
        DevicesController,
        *COUNTER_ROUTES,
        *POS_ROUTES,
        signed_by_till,
    ]


def create_app(settings: Settings, notifier: Notifier | None = None) -> Litestar:
    """The Litestar app for ``settings``; the lifespan opens the pool and Redis."""
    app = Litestar(
        route_handlers=_route_handlers(),
        dependencies=_dependencies(),
        middleware=[
            RequestTelemetry,
            DefineMiddleware(BearerAuth, exclude=["/healthz", "/readyz", "/metrics", "/schema"]),
        ],
        exception_handlers=exception_handlers,
        before_request=strict_json_body,
        lifespan=[lifespan],
        state=State({"settings": settings, "notifier": notifier}),
        openapi_config=OpenAPIConfig(
            title="Regulars API",
            version="1",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(security_schemes=dict(SECURITY_SCHEMES)),
        ),
        debug=False,
        logging_config=None,
    )
    document_problems(app)
    if settings.checkout_lane:
        # In front of the router, so the checkout skips the whole request cycle; anything the
        # lane does not serve reaches the router as if the lane were not there.
        app.asgi_handler = CheckoutLane(app.asgi_handler)
    if settings.pos_receipt_lane:
        # A till's receipt likewise (server/pos/lane.py); the same edge in front of it.
        app.asgi_handler = ReceiptLane(app.asgi_handler)
    # In front of everything, the lane included: one set of headers and body limits for all.
    app.asgi_handler = Edge(
        app.asgi_handler,
        body_limit=_body_limit(settings),
        hsts_max_age_s=None if settings.env == "dev" else settings.hsts_max_age_s,
        ndjson_paths=frozenset({RECEIPTS_BATCH}),
    )
    return app


def _body_limit(settings: Settings) -> Callable[[str], int]:
    """The largest request body each path takes (Settings: ``*_body_max_bytes``)."""

    def limit(path: str) -> int:
        if path == "/v1/orders":
            return settings.order_body_max_bytes
        if path.startswith("/v1/auth/"):
            return settings.auth_body_max_bytes
        if path == RECEIPTS_BATCH:  # bounded as it streams in (server/pos/batch.py)
            return settings.pos_batch_max_bytes
        return settings.body_max_bytes

    return limit
