"""The HTTP edge and small helpers shared by controllers.

:class:`Edge` is the outermost ASGI layer, in front of the checkout's lane and of Litestar's
router, so that whatever answers a request (a controller, the lane, an exception handler, the
edge itself) answers with the same security headers, within the same body limits, and never
with a server's plain-text 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.params import HeaderParameter
from litestar.types import ASGIApp, HTTPScope, Message, Receive, ReceiveMessage, Scope, Send

from server.infra.idempotency import MAX_KEY_LEN, Stored
from server.infra.observability import count_unhandled
from server.infra.problems import PROBLEM_JSON, Problem, internal_error, send_problem

__all__ = [
    "DOCS_PREFIX",
    "Edge",
    "IdempotencyKeyHeader",
    "stored_media_type",
    "stored_response",
    "strict_json_body",
]

log = logging.getLogger("regulars.http")

# The header every state-changing POST takes (DESIGN §9), required. Litestar refuses a request
# without it (problems.py answers 400 idempotency-key-required); require_key() refuses a blank.
IdempotencyKeyHeader = Annotated[
    str,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LEN,
        description="A unique id per intended operation; send the same one again on a retry.",
    ),
]

DOCS_PREFIX = "/schema"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Token responses (RFC 6749 §5.1), a device's secret and the guest's own data are never stored
# by a cache.
_NO_STORE_PREFIXES = ("/v1/auth/", "/v1/me/", "/v1/kiosk/devices/pair")
# The API answers JSON: nothing in it may run, load or be framed. The docs pages load their
# renderer from the CDN Litestar's render plugins name (Scalar its fonts from its own host),
# with inline start-up scripts; they may call only this origin.
_API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.scalar.com; "
    "font-src 'self' data: https://cdn.jsdelivr.net https://fonts.scalar.com; "
    "img-src 'self' data: https://cdn.jsdelivr.net; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Request bodies the API reads, by media type: JSON, and JSON-based types (application/*+json).
_JSON = "application/json"
_NDJSON = "application/x-ndjson"

Headers = list[tuple[bytes, bytes]]


def stored_media_type(stored: Stored) -> str:
    """The content type a stored response goes out with: a problem from 400 up."""
    return PROBLEM_JSON if stored.status_code >= 400 else "application/json"


def stored_response(stored: Stored) -> Response[bytes]:
    """Send a stored (or freshly made) response body exactly as it was first sent."""
    return Response(
        content=stored.body, status_code=stored.status_code, media_type=stored_media_type(stored)
    )


_strict_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


async def strict_json_body(request: Request[Any, Any, Any]) -> None:
    """Refuse (422) a JSON body that fits its route's Struct only when strings are read as
    numbers or booleans: Litestar converts ``data`` laxly (``"quantity": "2"`` became 2), the
    checkout's lane never did, and the contract says a quantity is a number. The app runs this
    before every handler (``before_request``); a body that does not parse at all is left to
    Litestar, which says so as it always has."""
    if request.method not in _BODY_METHODS:
        return
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None or not isinstance(data.annotation, type):
        return
    decoder = _strict_decoders.get(data.annotation)
    if decoder is None:
        decoder = _strict_decoders[data.annotation] = msgspec.json.Decoder(data.annotation)
    body = await request.body()
    # The edge refused a declared body that is not JSON; this catches one sent undeclared
    # (no Content-Length, as HTTP/2 allows).
    media_type = request.content_type[0].lower()
    if body and not _is_json(media_type):
        raise _not_json(media_type)
    try:
        decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ValidationException(
            "the request body is not valid", extra=[{"message": str(exc), "key": "data"}]
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return


class Edge:
    """Security headers on every response, body limits and media types checked before any
    body is read, and a problem+json 500 for an error that escaped everything else."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_limit: Callable[[str], int],
        hsts_max_age_s: int | None,
        ndjson_paths: frozenset[str] = frozenset(),
    ) -> None:
        """``body_limit`` gives the largest body a path takes; ``hsts_max_age_s`` None sends
        no Strict-Transport-Security (development over plain HTTP); ``ndjson_paths`` take
        newline-delimited JSON (``application/x-ndjson``) as well as JSON."""
        self.app = app
        self.body_limit = body_limit
        self.ndjson_paths = ndjson_paths
        common: Headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]
        if hsts_max_age_s is not None:
            hsts = f"max-age={hsts_max_age_s}; includeSubDomains"
            common.append((b"strict-transport-security", hsts.encode()))
        self._api = [*common, (b"content-security-policy", _API_CSP.encode())]
        self._docs = [*common, (b"content-security-policy", _DOCS_CSP.encode())]
        self._no_store = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        defaults = self._docs if path.startswith(DOCS_PREFIX) else self._api
        private = path == "/v1/me" or path.startswith(_NO_STORE_PREFIXES)
        forced = self._no_store if private else []
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = _secured(list(message.get("headers", [])), defaults, forced)
            await send(message)

        try:
            refusal, receive = self._admit_body(scope, receive)
            if refusal is not None:
                await send_problem(send_secured, refusal, path)
                return
            await self.app(scope, receive, send_secured)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], path)
            if not started:
                count_unhandled(scope)
                await send_problem(send_secured, internal_error(), path)

    def _admit_body(self, scope: HTTPScope, receive: Receive) -> tuple[Problem | None, Receive]:
        """A 413 or 415 for a body the route will not read, or the ``receive`` to read it
        with (counting bytes when the client did not say how many it sends)."""
        if scope["method"] not in _BODY_METHODS:
            return None, receive
        length: int | None = None
        chunked = False
        media_type = ""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"content-type":
                media_type = value.decode("latin-1").partition(";")[0].strip().lower()
        limit = self.body_limit(scope["path"])
        if length is not None and length > limit:
            return _too_large(limit), receive
        ndjson = media_type == _NDJSON and scope["path"] in self.ndjson_paths
        if (chunked or length) and not (_is_json(media_type) or ndjson):
            return _not_json(media_type), receive
        if length is None:
            return None, _limited(receive, limit)
        return None, receive


def _is_json(media_type: str) -> bool:
    return media_type == _JSON or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _not_json(media_type: str) -> Problem:
    got = media_type or "no Content-Type"
    return Problem(415, "unsupported-media-type", f"send the body as {_JSON} (got {got})")


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        "payload-too-large",
        f"the request body is larger than this route takes ({limit} bytes)",
    )


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses (413) a body once it grows past ``limit`` bytes."""
    seen = 0

    async def counted() -> ReceiveMessage:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return counted


def _secured(headers: Headers, defaults: Headers, forced: Headers) -> Headers:
    """The response's own headers, then each default it does not set itself, then the forced
    ones in place of its own of the same name."""
    names = {name.lower() for name, _ in headers}
    if forced:
        drop = {name for name, _ in forced}
        headers = [(n, v) for n, v in headers if n.lower() not in drop]
    return [
        *headers,
        *(header for header in defaults if header[0] not in names),
        *forced,
    ]
