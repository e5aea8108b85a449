"""Every guard runs on the event loop: Litestar sends a sync guard to a thread pool, a thread
hop on every request of its routes (GET /v1/orders/{id} is what a waiting guest polls)."""

from __future__ import annotations

from litestar.handlers import BaseRouteHandler
from litestar.utils.sync import AsyncCallable

from server.app import create_app
from server.settings import load_settings


def test_no_route_runs_its_guards_in_a_thread() -> None:
    app = create_app(load_settings(environ={}))
    handlers: list[BaseRouteHandler] = [
        handler for route in app.routes for handler in getattr(route, "route_handlers", [])
    ]
    guarded = [h for h in handlers if h.resolve_guards()]
    assert guarded, "no guarded route found: the walk over the routes is wrong"
    in_threads = [
        f"{h.handler_name}: {getattr(g, 'func', g).__name__}"
        for h in guarded
        for g in h.resolve_guards()
        if isinstance(g, AsyncCallable)
    ]
    assert in_threads == []
