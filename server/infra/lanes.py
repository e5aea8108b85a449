"""What the request lanes share: raw ASGI paths in front of Litestar's router for the few
requests the rush is made of (the checkout's, server/orders/lane.py; a till's receipt,
server/pos/lane.py). Each reads its body itself, answers as its Litestar route would, and
hands anything it does not serve to Litestar with the body it read replayed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Protocol, TypeVar

import msgspec
from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter

from server.infra.observability import RequestTelemetry
from server.infra.problems import exception_handlers

__all__ = [
    "Admitted",
    "Lane",
    "read_body",
    "render_exception",
    "replay",
    "respond",
    "single_headers",
]


class Admitted(Protocol):
    """What a lane knows of a request it will serve before reading the body."""

    @property
    def length(self) -> int: ...


AdmittedT = TypeVar("AdmittedT", bound=Admitted)
BodyT = TypeVar("BodyT")


class Lane(Generic[AdmittedT, BodyT]):
    """``POST path`` served without Litestar's request cycle; an ASGI app in front of
    Litestar's router (``Litestar.asgi_handler``). A subclass says which requests it serves
    (:meth:`admit`, before the body is read), how the body decodes (:meth:`decode`) and what
    the answer is (:meth:`handle`). Everything else reaches Litestar unchanged, with the body
    read so far replayed: a request not admitted, a body of another length than declared, a
    body that does not decode (Litestar says what is wrong, as it always has). What
    :meth:`handle` raises is rendered by the app's exception handlers, under the same request
    id and metrics as Litestar's (:class:`RequestTelemetry`)."""

    path: ClassVar[str]

    def __init__(self, app: ASGIApp, served: Counter) -> None:
        """``served`` counts requests by ``served_by`` (lane or litestar)."""
        self.app = app
        self._by_lane = served.labels("lane")
        self._by_litestar = served.labels("litestar")

    async def admit(self, scope: Scope, app_state: Any) -> AdmittedT | None:
        raise NotImplementedError

    def decode(self, body: bytes) -> BodyT:
        raise NotImplementedError

    def entering(self, scope: Scope, admitted: AdmittedT) -> None:
        """Set what Litestar would have set in ``scope`` for the route (nothing by default)."""

    async def handle(
        self, app_state: Any, admitted: AdmittedT, body: bytes, decoded: BodyT
    ) -> tuple[int, str, bytes]:
        """The answer's status, media type and body."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or scope["path"] != self.path
            or scope["method"] != "POST"
        ):
            await self.app(scope, receive, send)
            return
        app_state = scope["app"].state
        admitted = await self.admit(scope, app_state)
        if admitted is None:
            await self._pass_on(scope, receive, send)
            return
        body = await read_body(receive, admitted.length)
        if body is None:  # the client went away, or sent another length than it declared
            await self._pass_on(scope, replay(b"", receive), send)
            return
        try:
            decoded = self.decode(body)
        # msgspec raises the last two for a string that is not UTF-8 and for nesting deeper
        # than the stack it has left.
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            await self._pass_on(scope, replay(body, receive), send)
            return
        self._by_lane.inc()
        self.entering(scope, admitted)
        scope["path_template"] = self.path  # the label Litestar's router gives this route

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                status, media_type, answer = await self.handle(app_state, admitted, body, decoded)
            except Exception as exc:
                await render_exception(scope, receive, send, exc)
                return
            await respond(send, status, media_type, answer)

        await RequestTelemetry(serve)(scope, receive, send)

    async def _pass_on(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._by_litestar.inc()
        await self.app(scope, receive, send)


def single_headers(scope: Scope, names: tuple[bytes, ...]) -> dict[bytes, bytes] | None:
    """The request's ``names`` headers, or None when one of them comes twice (which counts is
    Litestar's call) or the body is chunked (a lane needs its declared length)."""
    seen: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in names:
            if name in seen:
                return None
            seen[name] = value
        elif name == b"transfer-encoding":
            return None
    return seen


async def read_body(receive: Receive, length: int) -> bytes | None:
    """The body of a request that declared ``length`` bytes; None if the client went away
    or sent another length than it declared."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > length:
            return None
        if not message.get("more_body", False):
            return b"".join(chunks) if size == length else None


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands ``body`` over once more, then the client's own messages."""
    replayed = False

    async def replaying() -> Any:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replaying


async def respond(send: Send, status: int, media_type: str, body: bytes) -> None:
    """What Litestar sends for a ``Response`` of bytes: the body, its type and its length."""
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", media_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def render_exception(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Render ``exc`` as Litestar's exception middleware would: the app's handler for the
    nearest class of ``exc`` (server.infra.problems ends with one for ``Exception``)."""
    handler = next(exception_handlers[c] for c in type(exc).__mro__ if c in exception_handlers)
    request: Request[Any, Any, Any] = Request(scope, receive, send)
    response = handler(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)
