"""The checkout's own lane: POST /v1/orders served without Litestar's request cycle.

Why (issue 5): the checkout is the one request the morning rush is made of, and Litestar's
request cycle cost more than a third of its API time. In-process, 3 interleaved pairs
(``python -m loadtests.checkout_cpu``): 0.50 - 0.64 ms of CPU per checkout through Litestar,
0.29 - 0.36 ms calling the same service directly; the API's CPU is what keeps the checkout
from half of the database's own floor (docs/PERFORMANCE.md, "What stands between R1 and 0.5").

What the lane serves: only a request that Litestar would hand to ``OrdersController.place``
with nothing refused on the way in: one bearer token that verifies to a guest, one
Idempotency-Key that :func:`require_key` accepts, a body of a declared length up to
``Settings.order_body_max_bytes`` that decodes strictly to ``OrderIn``. The edge in front of
it (server/infra/http.py) has already refused a body too large or not JSON, and adds the
security headers to whatever the lane sends. It calls the same
``Orders.place`` and renders what that raises with the app's own exception handlers, with the
same request id and metrics (:class:`RequestTelemetry`).

What it leaves alone: any other request goes to Litestar unchanged (with the body it read
replayed), so every refusal on the way in (401, 403, 400, 422, 413) reads exactly as before,
and the controller stays the route OpenAPI documents. ``Settings.checkout_lane`` turns the lane
off, for comparing both (tests/api/test_checkout_lane.py, ``loadtests.bench``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.types import ASGIApp, Scope
from prometheus_client import Counter

from server.auth.guards import bearer_token, refuse_revoked
from server.auth.tokens import TokenIssuer
from server.infra.http import stored_media_type
from server.infra.idempotency import require_key
from server.infra.identity import Principal, TokenError
from server.infra.lanes import Lane, single_headers
from server.infra.problems import Problem
from shared import contract

__all__ = ["CheckoutLane"]

PATH = "/v1/orders"

_decode_order = msgspec.json.Decoder(contract.OrderIn).decode
_SERVED = Counter(
    "regulars_checkout_lane_total", "POST /v1/orders by who served it", ("served_by",)
)


class _Admitted(msgspec.Struct, frozen=True):
    principal: Principal
    token: str
    key: str
    length: int


class CheckoutLane(Lane[_Admitted, contract.OrderIn]):
    """The checkout's lane (see the module); the shared plumbing is server.infra.lanes.Lane."""

    path = PATH

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, _SERVED)

    async def admit(self, scope: Scope, app_state: Any) -> _Admitted | None:
        admitted = _admit(scope, app_state.tokens, app_state.settings.order_body_max_bytes)
        if admitted is not None and await _revoked(admitted.principal, app_state):
            return None  # Litestar's authentication refuses it, with the reason
        return admitted

    def decode(self, body: bytes) -> contract.OrderIn:
        return _decode_order(body)

    def entering(self, scope: Scope, admitted: _Admitted) -> None:
        scope["user"], scope["auth"] = admitted.principal, admitted.token

    async def handle(
        self, app_state: Any, admitted: _Admitted, body: bytes, decoded: contract.OrderIn
    ) -> tuple[int, str, bytes]:
        stored = await app_state.services.orders.place(admitted.principal, decoded, admitted.key)
        return stored.status_code, stored_media_type(stored), stored.body


def _admit(scope: Scope, tokens: TokenIssuer, max_body_bytes: int) -> _Admitted | None:
    """The request's guest, key and body length, or None when Litestar should answer it."""
    seen = single_headers(scope, (b"authorization", b"idempotency-key", b"content-length"))
    if seen is None:
        return None
    token = bearer_token(seen.get(b"authorization", b"").decode("latin-1"))
    length = seen.get(b"content-length", b"")
    if not token or not length.isdigit() or int(length) > max_body_bytes:
        return None
    try:
        principal = tokens.verify(token)
        key = require_key(seen[b"idempotency-key"].decode("latin-1"))
    except (TokenError, Problem, KeyError):
        return None
    if principal.kind != "guest":
        return None
    return _Admitted(principal, token, key, int(length))


async def _revoked(principal: Principal, app_state: Any) -> bool:
    try:
        await refuse_revoked(principal, app_state.services.auth.revocations)
    except TokenError:
        return True
    return False
