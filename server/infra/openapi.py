"""What the OpenAPI document says beyond what Litestar reads from a handler's signature.

- Security schemes, defined once: ``bearer`` (the access JWT) and the POS signature of
  DESIGN §10 (``X-Regulars-Key`` and ``X-Regulars-Signature``, both sent together). A route
  declares which it takes with ``security=BEARER`` or ``security=POS_SIGNED`` on its
  controller or decorator.
- Problems: every refusal is ``application/problem+json`` with the one ``Problem`` schema.
  :func:`document_problems` gives each route the statuses that its shape implies (a body can
  be malformed, too large or not JSON; a secured route can be refused a token; a path id can
  name nothing; any route can fail); a route adds the ones its use case raises with
  ``responses=problems(...)``.

tests/api/test_openapi_contract.py holds the app to this document with schemathesis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import SecurityRequirement, SecurityScheme
from litestar.params import HeaderParameter, QueryParameter
from litestar.routes import HTTPRoute

from server.infra.problems import PROBLEM_JSON
from shared import contract

__all__ = [
    "BEARER",
    "POS_SIGNED",
    "SECURITY_SCHEMES",
    "answer",
    "document_problems",
    "problems",
]

SECURITY_SCHEMES: Mapping[str, SecurityScheme] = {
    "bearer": SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="JWT",
        description="An access token from /v1/auth/otp/verify, /v1/auth/staff, /v1/auth/pin "
        "or /v1/auth/refresh.",
    ),
    "posKey": SecurityScheme(
        type="apiKey",
        name="X-Regulars-Key",
        security_scheme_in="header",
        description="The key id of the till's integration (DESIGN §10); always sent with "
        "X-Regulars-Signature.",
    ),
    "posSignature": SecurityScheme(
        type="apiKey",
        name="X-Regulars-Signature",
        security_scheme_in="header",
        description='`t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. Older than '
        "5 minutes, reused or wrong: 401, and nothing is stored.",
    ),
}
BEARER: list[SecurityRequirement] = [{"bearer": []}]
# Both headers in one requirement: a POS request needs the key id and the signature together.
POS_SIGNED: list[SecurityRequirement] = [{"posKey": [], "posSignature": []}]

_DESCRIPTIONS = {
    400: "Malformed: the body is not JSON, or a header is missing or invalid",
    401: "No valid credentials",
    402: "The payment was declined",
    403: "Signed in, but not allowed to do this",
    404: "Nothing of that id that the caller may see",
    409: "In conflict with the current state (or with a request still in flight)",
    413: "The body is larger than this route takes",
    415: "The body is not JSON",
    422: "Well-formed, but not acceptable: the problem's type says why",
    423: "Locked after too many failures",
    429: "Too many requests; Retry-After says when to come back",
    500: "An error on our side; it was logged",
    503: "A dependency is unavailable or overloaded; Retry-After says when to come back",
}


def answer(model: type, description: str) -> ResponseSpec:
    """A JSON answer of ``model``, for a route whose handler returns stored bytes (so Litestar
    cannot see the type) or that answers a second success status. No generated examples:
    random strings would say nothing true."""
    return ResponseSpec(data_container=model, description=description, generate_examples=False)


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route: each status as a problem+json ``Problem``."""
    return {
        status: ResponseSpec(
            data_container=contract.Problem,
            media_type=PROBLEM_JSON,
            description=_DESCRIPTIONS.get(status, "Refused"),
            generate_examples=False,
        )
        for status in statuses
    }


def document_problems(app: Litestar) -> None:
    """Add to every HTTP route of ``app`` the problem statuses its shape implies, leaving the
    responses the route documents itself as they are."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            implied = problems(*_implied_statuses(route, handler))
            handler.responses = {**implied, **(handler.responses or {})}


def _implied_statuses(route: HTTPRoute, handler: HTTPRouteHandler) -> Iterable[int]:
    yield from (400, 500)  # 400 also replaces Litestar's own, which is not a problem
    if route.path.startswith("/v1/"):
        yield 503  # the database (or a limit's Redis) is down or too busy
    if handler.resolve_security():
        yield from (401, 403)
    if route.path_parameters:
        yield 404
    parameters = handler.parsed_fn_signature.parameters
    if "data" in parameters:
        yield from (400, 413, 415, 422)
    for field in parameters.values():
        kwarg = field.kwarg_definition
        if isinstance(kwarg, HeaderParameter) and kwarg.name == "Idempotency-Key":
            yield from (409, 422)  # the same key still in flight; reused with another body
        elif isinstance(kwarg, QueryParameter):
            yield 422
