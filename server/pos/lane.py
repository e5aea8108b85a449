"""A till's receipt lane: POST /v1/pos/receipts served without Litestar's request cycle.

Why (issue 23): a signed receipt cost the API about twice the CPU PostgreSQL spends on it, and
Litestar's cycle (guard, before-request hook, signature model, dependency injection, response)
was a good part of what is not round trips (docs/PERFORMANCE.md, "Real-time intake").

What the lane serves: only a request that Litestar would hand to ``TillController.receipt``'s
guard with one ``X-Regulars-Key``, one ``X-Regulars-Signature`` and a body of a declared length
(the edge, server/infra/http.py, has already refused one too large or not JSON) that decodes
strictly to ``ReceiptIn``. It then does what the route does, in its order: the signature check
(:meth:`TillAuth.verify`: key, age, HMAC, replay guard; a key read before is taken from the
cache and checked by the receipt's own statement, see server/pos/auth.py) and
``Intake.take``, rendering what they raise with the app's own exception handlers, under the
same request id and metrics (:class:`RequestTelemetry`), and answers 201 with the stored body
as the route does.

What it leaves alone: any other request goes to Litestar unchanged (with the body it read
replayed). A body that does not decode reaches Litestar before its signature was checked, so
the route checks it once, first, as always: a request signed badly is 401 whatever its body,
and nothing here remembered its signature. ``Settings.pos_receipt_lane`` turns the lane off,
for comparing both (tests/api/test_pos_lane.py, ``loadtests.bench``).
"""

from __future__ import annotations

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import Counter

from server.infra.lanes import read_body, render_exception, replay, respond
from server.infra.observability import RequestTelemetry
from server.pos.auth import KEY_HEADER, SIGNATURE_HEADER
from shared.pos import ReceiptIn

__all__ = ["ReceiptLane"]

PATH = "/v1/pos/receipts"

_decode_receipt = msgspec.json.Decoder(ReceiptIn).decode
_SERVED = Counter(
    "regulars_pos_receipt_lane_total", "POST /v1/pos/receipts by who served it", ("served_by",)
)
_KEY, _SIGNATURE = KEY_HEADER.encode(), SIGNATURE_HEADER.encode()
_WATCHED = (_KEY, _SIGNATURE, b"content-length")


class _Admitted(msgspec.Struct, frozen=True):
    headers: dict[str, str]
    length: int


class ReceiptLane:
    """An ASGI app in front of Litestar's router (``Litestar.asgi_handler``); see the module."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._by_lane = _SERVED.labels("lane")
        self._by_litestar = _SERVED.labels("litestar")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        app_state = scope["app"].state
        admitted = _admit(scope, app_state.settings.body_max_bytes)
        if admitted is None:
            await self._pass_on(scope, receive, send)
            return
        body = await read_body(receive, admitted.length)
        if body is None:  # the client went away, or sent another length than it declared
            await self._pass_on(scope, replay(b"", receive), send)
            return
        try:
            receipt = _decode_receipt(body)
        # Litestar says what is wrong, as it always has. msgspec raises the last two for a
        # string that is not UTF-8 and for nesting deeper than the stack it has left.
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            await self._pass_on(scope, replay(body, receive), send)
            return
        self._by_lane.inc()
        scope["path_template"] = PATH  # the label Litestar's router gives this route
        services = app_state.services

        async def take(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                # One pooled connection for the key and the receipt: one acquire, not two. A
                # key known before is not read: the receipt's statement checks it is active.
                async with services.db.connection() as conn:
                    till = await services.till_auth.verify(admitted.headers, body, conn, known=True)
                    taken = await services.intake.take(till, receipt, conn)
            except Exception as exc:
                await render_exception(scope, receive, send, exc)
                return
            await respond(send, 201, "application/json", taken.body)

        await RequestTelemetry(take)(scope, receive, send)

    async def _pass_on(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._by_litestar.inc()
        await self.app(scope, receive, send)


def _admit(scope: Scope, max_body_bytes: int) -> _Admitted | None:
    """The signature headers and the body's length, or None when Litestar should answer."""
    seen: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WATCHED:
            if name in seen:
                return None  # which one counts is Litestar's call
            seen[name] = value
        elif name == b"transfer-encoding":
            return None
    length = seen.get(b"content-length", b"")
    if _KEY not in seen or _SIGNATURE not in seen:
        return None  # refused by the route's guard, which says what to send
    if not length.isdigit() or int(length) > max_body_bytes:
        return None
    # As Litestar reads them for the guard (TillAuth takes anything with ``.get``).
    headers = {
        KEY_HEADER: seen[_KEY].decode("latin-1"),
        SIGNATURE_HEADER: seen[_SIGNATURE].decode("latin-1"),
    }
    return _Admitted(headers, int(length))
