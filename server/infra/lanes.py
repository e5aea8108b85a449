"""What the request lanes share: raw ASGI paths in front of Litestar's router for the few
requests the rush is made of (the checkout's, server/orders/lane.py; a till's receipt,
server/pos/lane.py). Each reads its body itself, answers as its Litestar route would, and
hands anything it does not serve to Litestar with the body it read replayed.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.types import Message, Receive, Scope, Send

from server.infra.problems import exception_handlers

__all__ = ["read_body", "render_exception", "replay", "respond"]


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
