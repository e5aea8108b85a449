"""RFC 9457 problem details: every error the API returns, with a stable ``type`` slug.

Services raise :class:`Problem`; the handlers here turn it, Litestar's own HTTP errors and
anything unexpected into ``application/problem+json``. A validation error names the field.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Send

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_JSON",
    "Problem",
    "database_busy",
    "exception_handlers",
    "idempotency_key_invalid",
    "idempotency_key_required",
    "internal_error",
    "problem_response",
    "send_problem",
]

PROBLEM_BASE = "https://docs.regulars.dev/problems/"
PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("regulars.problems")

_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "unprocessable",
    429: "rate-limited",
    503: "unavailable",
}


class Problem(Exception):
    """A refusal the client can act on: ``slug`` is stable, ``detail`` is for humans."""

    def __init__(self, status: int, slug: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.slug.replace("-", " ").capitalize(),
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


def problem_response(
    problem: Problem, instance: str | None = None, headers: dict[str, str] | None = None
) -> Response[bytes]:
    headers = dict(headers or {})
    if "retry_after_s" in problem.extra:
        headers["retry-after"] = str(problem.extra["retry_after_s"])
    return Response(
        content=msgspec.json.encode(problem.body(instance)),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers or None,
    )


async def send_problem(send: Send, problem: Problem, instance: str | None = None) -> None:
    """Send ``problem`` as a whole response straight to ASGI ``send``: for the layers in front
    of Litestar (server/infra/http.py, the checkout's lane), where no Response can be built."""
    body = msgspec.json.encode(problem.body(instance))
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if "retry_after_s" in problem.extra:
        headers.append((b"retry-after", str(problem.extra["retry_after_s"]).encode()))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def internal_error() -> Problem:
    """The 500 of an error nobody expected: the details are in the log, not in the answer."""
    return Problem(500, "internal-error", "something went wrong on our side; it was logged")


def _on_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
    return problem_response(exc, request.url.path)


IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_LEN = 100


def idempotency_key_required() -> Problem:
    return Problem(
        400,
        "idempotency-key-required",
        "send an Idempotency-Key header (a unique id per intended operation; reuse it on retry)",
    )


def idempotency_key_invalid() -> Problem:
    return Problem(
        400,
        "idempotency-key-invalid",
        f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_LEN}",
    )


def _on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    # Litestar checks the Idempotency-Key header (server/infra/http.py declares it required);
    # its refusal keeps the slugs clients match on.
    if f"'{IDEMPOTENCY_KEY}'" in str(exc.detail):
        return problem_response(idempotency_key_required(), request.url.path)
    if any(isinstance(e, dict) and e.get("key") == "idempotency_key" for e in errors):
        return problem_response(idempotency_key_invalid(), request.url.path)
    fields = [_field_of(e) for e in errors if isinstance(e, dict)]
    detail = "; ".join(
        f"{f['field']}: {f['message']}" if f["field"] else f["message"] for f in fields
    )
    if not detail:
        detail = exc.detail or "the request is not valid"
    if "JSON is malformed" in detail or "malformed" in detail.lower():
        problem = Problem(400, "malformed-json", "the request body is not valid JSON: " + detail)
    else:
        problem = Problem(422, "validation-error", detail, errors=fields)
    return problem_response(problem, request.url.path)


def _field_of(error: dict[str, Any]) -> dict[str, str]:
    message = str(error.get("message", "invalid"))
    key = str(error.get("key") or "")
    # msgspec messages end in "- at `$.lines[0].quantity`": that path is the field.
    if "- at `$" in message:
        message, _, path = message.partition(" - at `$")
        key = path.rstrip("`").lstrip(".") or key
    return {"field": key, "message": message}


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    slug = _STATUS_SLUGS.get(status, "error")
    # Litestar answers an undecodable body with a plain 400 carrying msgspec's message.
    if status == 400 and any(w in str(exc.detail) for w in ("malformed", "truncated", "JSON")):
        slug = "malformed-json"
    # Keep the exception's headers: a 405 says which methods the path takes (``Allow``).
    problem = Problem(status, slug, str(exc.detail))
    return problem_response(problem, request.url.path, exc.headers)


def _on_database_lost(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The transaction was rolled back with the connection: nothing was half-written.
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    problem = Problem(
        503,
        "database-unavailable",
        "the database is not answering; try again shortly",
        retry_after_s=2,
    )
    return problem_response(problem, request.url.path)


def _on_unstorable_text(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # PostgreSQL text and jsonb cannot hold U+0000; the statement failed, nothing was written.
    problem = Problem(
        422,
        "invalid-text",
        "a text field contains a NUL character (\\u0000), which cannot be stored",
    )
    return problem_response(problem, request.url.path)


def _on_undecodable_body(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # Litestar's JSON decoding lets these through: a body that is not UTF-8, or nested deeper
    # than msgspec recurses. Any other recursion is ours, and a 500.
    if isinstance(exc, RecursionError) and "deserializing" not in str(exc):
        return _on_unexpected(request, exc)
    reason = "it is not valid UTF-8" if isinstance(exc, UnicodeError) else "it is nested too deep"
    problem = Problem(400, "malformed-json", f"the request body cannot be read: {reason}")
    return problem_response(problem, request.url.path)


def database_busy(detail: str = "the database is too busy right now; try again") -> Problem:
    """503 with Retry-After: overload is a reason to come back in a moment, not a 500."""
    return Problem(503, "database-busy", detail, retry_after_s=1)


def _on_statement_timeout(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("statement timeout on %s %s", request.method, request.url.path)
    return problem_response(database_busy(), request.url.path)


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(internal_error(), request.url.path)


exception_handlers: dict[type[Exception] | int, Any] = {
    Problem: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    asyncpg.PostgresConnectionError: _on_database_lost,
    asyncpg.ConnectionDoesNotExistError: _on_database_lost,
    asyncpg.CannotConnectNowError: _on_database_lost,
    # A session PostgreSQL ended (a restart, a failover, pg_terminate_backend) can surface as
    # "cannot switch to state N; another operation (2) is in progress" (asyncpg issue #1069).
    asyncpg.InternalClientError: _on_database_lost,
    ConnectionRefusedError: _on_database_lost,
    asyncpg.QueryCanceledError: _on_statement_timeout,
    asyncpg.CharacterNotInRepertoireError: _on_unstorable_text,
    asyncpg.UntranslatableCharacterError: _on_unstorable_text,
    UnicodeDecodeError: _on_undecodable_body,
    RecursionError: _on_undecodable_body,
    Exception: _on_unexpected,
}
