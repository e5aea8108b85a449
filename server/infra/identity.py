"""Who is calling, and the guards controllers declare on it (DESIGN §6: infra, so every domain
may name a principal without importing the auth domain that issues tokens).

Guards are async although they do no I/O: Litestar runs sync guards in a thread pool, which
cost a thread hop on every authenticated request (seen in py-spy under load).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from server.infra.problems import Problem

__all__ = [
    "ROLE_RANK",
    "Principal",
    "TokenError",
    "requires_authenticated",
    "requires_guest",
    "requires_role",
    "requires_staff",
]

ROLE_RANK = {"barista": 1, "shift_lead": 2, "manager": 3, "admin": 4}


class TokenError(Exception):
    """The token is missing, malformed, expired or signed by someone else."""


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["guest", "staff"]
    subject_id: UUID
    brand_id: UUID
    role: str = "guest"
    # Empty for staff means every location of the brand.
    location_ids: frozenset[UUID] = field(default_factory=frozenset)
    device_id: UUID | None = None
    # The refresh-token family (the session) the access token was issued in: signing out, or
    # a reused refresh token, denies the whole family (server/auth/revocation.py).
    family_id: UUID | None = None

    def at_least(self, role: str) -> bool:
        return self.kind == "staff" and ROLE_RANK.get(self.role, 0) >= ROLE_RANK[role]

    def covers(self, location_id: UUID) -> bool:
        """Whether this staff member may act for ``location_id``."""
        return self.kind == "staff" and (not self.location_ids or location_id in self.location_ids)


def _principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        error = connection.scope.get("auth")
        if isinstance(error, TokenError):
            raise Problem(401, "invalid-token", str(error))
        raise Problem(401, "unauthenticated", "sign in first: send an Authorization: Bearer token")
    return user


async def requires_guest(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    if _principal(connection).kind != "guest":
        raise Problem(403, "guests-only", "this call is for signed-in guests")


async def requires_staff(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    if _principal(connection).kind != "staff":
        raise Problem(403, "staff-only", "this call is for staff")


def requires_role(role: str) -> Any:
    """A guard that admits staff of ``role`` or above."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = _principal(connection)
        if not principal.at_least(role):
            raise Problem(403, "insufficient-role", f"this call needs the {role} role or above")

    return guard


async def requires_authenticated(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    _principal(connection)
