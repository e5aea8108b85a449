"""The OpenAPI document tells the truth (issue 21, finding 9).

Schemathesis reads /schema/openapi.json from the real API (uvicorn in this process, over the
session's PostgreSQL and Redis), generates requests for every operation from it, and checks
every answer against it: no 5xx, no status the operation does not document, the documented
content type, a body that fits the documented schema, 405 with ``Allow`` for a method the path
does not take. Guests' and staff routes get a guest's or a manager's token, and a path or body
that names a location, a guest or an order names real ones, so the requests reach the handlers
and their use cases rather than stopping at 401 or 404.

Bounded: ``MAX_EXAMPLES`` generated cases per operation (plus schemathesis' coverage cases),
derandomized and without an example database, so a run is the same run every time. The whole
file took 20-25 s on the 2-core box with little else running, ~60 s beside other test runs.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from server.app import create_app
from server.settings import load_settings
from tests.conftest import LiveServer

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
]
# Operations a guest calls; every other secured one is a staff member's (a manager's).
GUEST_OPERATIONS = ("/v1/me", "POST /v1/orders", "/payments")


@pytest.fixture(scope="module")
def known(live_server: LiveServer) -> dict[str, str]:
    """Tokens, and the ids of a real location, guest and order for the generated requests."""
    guest = live_server.new_guest(points=500)
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        station = next(
            loc["id"] for loc in http.get("/v1/locations").json() if "24/7" in loc["name"]
        )
        menu = http.get(f"/v1/locations/{station}/menu").json()
        item = menu["categories"][0]["items"][0]["id"]
        placed = http.post(
            "/v1/orders",
            json={"location_id": station, "lines": [{"item_id": item, "quantity": 1}]},
            headers={
                "Authorization": f"Bearer {guest['token']}",
                "Idempotency-Key": str(uuid.uuid4()),
            },
        )
    assert placed.status_code == 201, placed.text
    return {
        "guest": guest["token"],
        "staff": live_server.staff_token("manager"),
        "location_id": station,
        "guest_id": guest["id"],
        "order_id": placed.json()["id"],
    }


def aim(case: Any, known: dict[str, str]) -> dict[str, str]:
    """Point ``case`` at real objects; the headers that sign it in as whom the route serves."""
    for name in case.path_parameters or {}:
        if name in known:
            case.path_parameters[name] = known[name]
    if isinstance(case.body, dict) and "location_id" in case.body:
        case.body["location_id"] = known["location_id"]
    label = f"{case.method.upper()} {case.operation.path}"
    guest = any(marker in label for marker in GUEST_OPERATIONS)
    return {"Authorization": f"Bearer {known['guest' if guest else 'staff']}"}


# The document the app serves at /schema/openapi.json (a test below checks they are one).
DOCUMENT = msgspec.json.decode(
    msgspec.json.encode(create_app(load_settings(environ={})).openapi_schema.to_schema())
)
contract = schemathesis.openapi.from_dict(DOCUMENT)


@contract.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_as_its_document_says(
    case: Any, live_server: LiveServer, known: dict[str, str]
) -> None:
    headers = aim(case, known)
    case.call_and_validate(base_url=live_server.base_url, headers=headers, checks=CHECKS)


def test_the_document_is_the_one_the_api_serves(live_server: LiveServer) -> None:
    served = httpx.get(f"{live_server.base_url}/schema/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == DOCUMENT


def test_every_route_with_a_body_documents_the_refusals_of_the_edge(
    live_server: LiveServer, known: dict[str, str]
) -> None:
    """Schemathesis does not judge its own request-shape probes (a body of another media
    type), so the edge's 415 and 413 are held to the document here, route by route."""
    headers = {"Authorization": f"Bearer {known['staff']}", "Idempotency-Key": "edge"}
    oversized = b'{"padding": "' + b"x" * 70_000 + b'"}'
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        for path, item in DOCUMENT["paths"].items():
            url = path
            for name in ("location_id", "guest_id", "order_id", "item_id", "transfer_id"):
                url = url.replace("{" + name + "}", known.get(name, str(uuid.uuid4())))
            for method, operation in item.items():
                if "requestBody" not in operation:
                    continue
                documented = operation["responses"]
                as_text = {**headers, "Content-Type": "text/plain"}
                refused = http.request(method, url, content=b"{}", headers=as_text)
                assert (refused.status_code, "415" in documented) == (415, True), path
                as_json = {**headers, "Content-Type": "application/json"}
                refused = http.request(method, url, content=oversized, headers=as_json)
                assert (refused.status_code, "413" in documented) == (413, True), path
