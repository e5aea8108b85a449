"""Small helpers shared by controllers: stored responses and pagination bounds."""

from __future__ import annotations

from typing import Annotated

from litestar import Response
from litestar.params import HeaderParameter

from server.infra.idempotency import Stored
from server.infra.problems import PROBLEM_JSON

__all__ = ["IdempotencyKeyHeader", "stored_media_type", "stored_response"]

# The header every state-changing POST takes (DESIGN §9); require_key() says when it is missing.
IdempotencyKeyHeader = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", required=False)
]


def stored_media_type(stored: Stored) -> str:
    """The content type a stored response goes out with: a problem from 400 up."""
    return PROBLEM_JSON if stored.status_code >= 400 else "application/json"


def stored_response(stored: Stored) -> Response[bytes]:
    """Send a stored (or freshly made) response body exactly as it was first sent."""
    return Response(
        content=stored.body, status_code=stored.status_code, media_type=stored_media_type(stored)
    )
