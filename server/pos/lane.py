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

from typing import Any

import msgspec
from litestar.types import ASGIApp, Scope
from prometheus_client import Counter

from server.infra.lanes import Lane, single_headers
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


class ReceiptLane(Lane[_Admitted, ReceiptIn]):
    """A till's receipt lane (see the module); the plumbing is server.infra.lanes.Lane."""

    path = PATH

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, _SERVED)

    async def admit(self, scope: Scope, app_state: Any) -> _Admitted | None:
        return _admit(scope, app_state.settings.body_max_bytes)

    def decode(self, body: bytes) -> ReceiptIn:
        return _decode_receipt(body)

    async def handle(
        self, app_state: Any, admitted: _Admitted, body: bytes, decoded: ReceiptIn
    ) -> tuple[int, str, bytes]:
        services = app_state.services
        # One pooled connection for the key and the receipt: one acquire, not two. A key
        # known before is not read: the receipt's statement checks it is active.
        async with services.db.connection() as conn:
            till = await services.till_auth.verify(admitted.headers, body, conn, known=True)
            taken = await services.intake.take(till, decoded, conn)
        return 201, "application/json", taken.body


def _admit(scope: Scope, max_body_bytes: int) -> _Admitted | None:
    """The signature headers and the body's length, or None when Litestar should answer."""
    seen = single_headers(scope, _WATCHED)
    if seen is None:
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
