"""Who may call what: the authentication middleware and the guards controllers declare.

A token that does not verify leaves the request anonymous and is refused (401, with the
reason) only where a user is needed; public routes serve it like any anonymous request.

Guards are async although they do no I/O: Litestar runs sync guards in a thread pool, which
cost a thread hop on every authenticated request (seen in py-spy under load).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from server.auth.revocation import Revocations
from server.auth.tokens import TokenIssuer
from server.infra.identity import Principal, TokenError

__all__ = ["BearerAuth", "bearer_token", "refuse_revoked"]


class BearerAuth(AbstractAuthenticationMiddleware):
    """Decodes a bearer token when one is sent; public routes simply see no user."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = bearer_token(connection.headers.get("authorization"))
        if token is None and connection.scope["type"] == ScopeType.WEBSOCKET:
            # Browsers cannot set headers on a WebSocket; the kiosk passes ?token= instead.
            token = connection.query_params.get("token")
        if not token:
            return AuthenticationResult(user=None, auth=None)
        issuer: TokenIssuer = connection.app.state.tokens
        try:
            principal = issuer.verify(token)
            await refuse_revoked(principal, connection.app.state.services.auth.revocations)
            return AuthenticationResult(user=principal, auth=token)
        except TokenError as exc:
            # Refused by the routes that need a user (_principal), not here: a client that
            # sends its expired access token along must still reach /v1/auth/refresh.
            return AuthenticationResult(user=None, auth=exc)


async def refuse_revoked(principal: Principal, revocations: Revocations) -> None:
    """TokenError when the principal's session (refresh-token family) was revoked: signed out,
    or a reused refresh token. The checkout's lane calls this too."""
    if principal.family_id is not None and await revocations.is_denied(principal.family_id):
        raise TokenError("this session was signed out; sign in again")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` value (the scheme in any case), stripped;
    None when the header is missing or names another scheme. The checkout's lane reads the
    header with this too (server/orders/lane.py), so both accept the same tokens."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None
