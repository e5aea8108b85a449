"""The HTTP edge (issue 21, findings 1, 7 and 8): no input and no bug answers a plain-text 500,
every response carries the security headers, and a body is JSON of a size its route takes.

Checkouts are sent both through the app with its lane (server/orders/lane.py) and through one
without it: each rule must hold whichever path serves the request.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.settings import Settings
from tests.api.helpers import menu_items
from tests.conftest import Client, Demo, GuestHandle, app_client, new_phone, sign_in

PROBLEM = "application/problem+json"


@pytest.fixture(params=["lane", "litestar"])
async def either(
    request: pytest.FixtureRequest, client: Client, settings: Settings, notifier: RecordingNotifier
) -> AsyncIterator[Client]:
    """The test's client, once with the checkout's lane and once without it."""
    if request.param == "lane":
        yield client
        return
    async with app_client(
        msgspec.structs.replace(settings, checkout_lane=False), notifier
    ) as test_client:
        yield test_client


@pytest.fixture
async def items(client: Client, demo: Demo) -> dict[str, dict[str, Any]]:
    return await menu_items(client, demo.locations["station"])


def order(demo: Demo, items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    line = {"item_id": items["CRO"]["id"], "quantity": extra.pop("quantity", 1)}
    return {"location_id": str(demo.locations["station"]), "lines": [line], **extra}


def checkout_headers(guest: GuestHandle, **extra: str) -> dict[str, str]:
    return {
        **guest.headers,
        "Idempotency-Key": str(uuid.uuid4()),
        "Content-Type": "application/json",
        **extra,
    }


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    problem: dict[str, Any] = response.json()
    assert problem["type"].endswith("/" + slug), problem
    assert problem["status"] == status
    return problem


async def server_errors(client: Client) -> float:
    """How many 5xx answers /metrics has counted, over every route."""
    text = (await client.get("/metrics")).text
    return sum(
        float(n) for n in re.findall(r"^regulars_requests_error_total\{.*\} (\S+)$", text, re.M)
    )


# -- finding 1: no 500 for bad input, and any 500 is a counted problem -------------------------


async def test_an_order_nested_990_deep_is_a_400_problem(
    either: Client, notifier: RecordingNotifier, demo: Demo, items: Any
) -> None:
    guest = await sign_in(either, notifier)
    body = json.dumps(order(demo, items))[:-1] + ', "note": ' + "[" * 990 + "]" * 990 + "}"
    assert len(body) < 64 * 1024
    response = await either.post("/v1/orders", content=body, headers=checkout_headers(guest))
    assert_problem(response, 400, "malformed-json")


async def test_a_promo_code_that_is_not_utf8_is_a_400_problem(
    either: Client, notifier: RecordingNotifier, demo: Demo, items: Any
) -> None:
    guest = await sign_in(either, notifier)
    body = json.dumps(order(demo, items, promo_code="WELCOME10")).encode()
    body = body.replace(b"WELCOME10", b"WELC\xff\xfeME10")
    response = await either.post("/v1/orders", content=body, headers=checkout_headers(guest))
    problem = assert_problem(response, 400, "malformed-json")
    assert "UTF-8" in problem["detail"]


async def test_an_error_that_escapes_the_checkout_lane_is_a_counted_problem(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in front of Litestar's router (here: verifying the token) used to reach the
    server as an exception: a text/plain 500 that /metrics never counted."""

    def broken(token: str) -> Any:
        raise RuntimeError("a bug")

    before = await server_errors(client)
    monkeypatch.setattr(client.app.state.tokens, "verify", broken)
    response = await client.post(
        "/v1/orders", content=json.dumps(order(demo, items)), headers=checkout_headers(guest)
    )
    monkeypatch.undo()
    problem = assert_problem(response, 500, "internal-error")
    assert "a bug" not in problem["detail"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert await server_errors(client) == before + 1


async def test_an_error_in_a_route_is_a_counted_problem(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> Any:
        raise RuntimeError("a bug")

    before = await server_errors(client)
    monkeypatch.setattr(client.app.state.services.catalog, "locations", broken)
    assert_problem(await client.get("/v1/locations"), 500, "internal-error")
    monkeypatch.undo()
    assert await server_errors(client) == before + 1


# -- finding 7: security headers, no-store, and /metrics for the scraper only -----------------


async def test_every_response_carries_the_security_headers(
    client: Client, guest: GuestHandle, demo: Demo, items: Any
) -> None:
    placed = await client.post(
        "/v1/orders", content=json.dumps(order(demo, items)), headers=checkout_headers(guest)
    )
    assert placed.status_code == 201, placed.text  # served by the lane
    refused = await client.post(
        "/v1/orders",
        content=json.dumps(order(demo, items, quantity=0)),
        headers=checkout_headers(guest),
    )
    assert refused.status_code == 422
    answers = [
        placed,
        refused,
        await client.get("/healthz"),
        await client.get("/v1/locations"),
        await client.get("/v1/nowhere"),
        await client.get("/v1/me"),  # 401
        await client.get("/schema/openapi.json"),
    ]
    for response in answers:
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff", response.url
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["strict-transport-security"].startswith("max-age=")  # env is "test"
    assert placed.headers["content-security-policy"].startswith("default-src 'none'")


async def test_the_docs_get_their_own_content_security_policy(client: Client) -> None:
    page = await client.get("/schema/swagger")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net" in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"


async def test_no_hsts_in_development(settings: Settings, notifier: RecordingNotifier) -> None:
    async with app_client(msgspec.structs.replace(settings, env="dev"), notifier) as dev:
        response = await dev.get("/healthz")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in response.headers


async def test_tokens_and_the_guests_own_data_are_never_cached(
    client: Client, notifier: RecordingNotifier, guest: GuestHandle
) -> None:
    phone = new_phone()
    sent = await client.post("/v1/auth/otp", json={"phone": phone})
    verified = await client.post(
        "/v1/auth/otp/verify",
        json={"phone": phone, "code": notifier.codes[sent.json()["phone"]]},
    )
    assert verified.status_code == 200
    refreshed = await client.post(
        "/v1/auth/refresh", json={"refresh_token": verified.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200
    staff = await client.post(
        "/v1/auth/staff", json={"email": "nobody@demo.regulars.test", "password": "wrong"}
    )
    private = [
        verified,
        refreshed,
        staff,
        await client.get("/v1/me", headers=guest.headers),
        await client.get("/v1/me/wallet", headers=guest.headers),
        await client.get("/v1/me/qr", headers=guest.headers),
    ]
    for response in private:
        assert response.headers["cache-control"] == "no-store", response.url
        assert response.headers["pragma"] == "no-cache"
    assert "no-store" not in (await client.get("/v1/locations")).headers.get("cache-control", "")


async def test_metrics_answer_the_scraper_from_an_allowed_address(
    settings: Settings, notifier: RecordingNotifier
) -> None:
    # httpx's ASGI transport says the client is 127.0.0.1; the default allows loopback only.
    async with app_client(settings, notifier) as local:
        allowed = await local.get("/metrics")
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/plain")
    assert "regulars_requests_total" in allowed.text
    elsewhere = msgspec.structs.replace(settings, metrics_clients="10.20.0.0/16")
    async with app_client(elsewhere, notifier) as remote:
        assert_problem(await remote.get("/metrics"), 403, "scraper-only")


async def test_metrics_answer_only_with_the_scraper_token(
    settings: Settings, notifier: RecordingNotifier
) -> None:
    token = "scrape-" + uuid.uuid4().hex
    with_token = msgspec.structs.replace(settings, metrics_token=token, metrics_clients="")
    async with app_client(with_token, notifier) as test_client:
        assert_problem(await test_client.get("/metrics"), 403, "scraper-only")
        wrong = {"Authorization": f"Bearer {token}x"}
        assert_problem(await test_client.get("/metrics", headers=wrong), 403, "scraper-only")
        right = await test_client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert right.status_code == 200
    assert "regulars_requests_total" in right.text


# -- finding 8: JSON only, no strings for numbers, bodies of the size a route takes -----------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_an_order_that_is_not_json_is_a_415_problem(
    either: Client,
    notifier: RecordingNotifier,
    demo: Demo,
    items: Any,
    content_type: str | None,
) -> None:
    guest = await sign_in(either, notifier)
    headers = checkout_headers(guest)
    del headers["Content-Type"]
    if content_type:
        headers["Content-Type"] = content_type
    response = await either.post(
        "/v1/orders", content=json.dumps(order(demo, items)), headers=headers
    )
    assert_problem(response, 415, "unsupported-media-type")


async def test_a_quantity_sent_as_a_string_is_refused(
    either: Client, notifier: RecordingNotifier, demo: Demo, items: Any, services: Any
) -> None:
    guest = await sign_in(either, notifier)
    body = json.dumps(order(demo, items, quantity="2"))
    response = await either.post("/v1/orders", content=body, headers=checkout_headers(guest))
    problem = assert_problem(response, 422, "validation-error")
    assert "lines[0].quantity" in problem["detail"]
    async with either.app.state.services.db.connection() as conn:
        assert not await conn.fetchval("SELECT count(*) FROM orders WHERE guest_id = $1", guest.id)


async def test_strings_are_not_numbers_on_other_routes_either(
    client: Client, demo: Demo, guest: GuestHandle
) -> None:
    response = await client.post(
        f"/v1/guests/{guest.id}/adjustments",
        json={"points": "10", "reason": "a string is not a number"},
        headers={
            "Authorization": f"Bearer {demo.staff['manager']}",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert_problem(response, 422, "validation-error")


async def test_an_order_larger_than_its_limit_is_a_413_problem(
    either: Client, notifier: RecordingNotifier, settings: Settings, demo: Demo, items: Any
) -> None:
    guest = await sign_in(either, notifier)
    body = json.dumps(order(demo, items, note="x" * settings.order_body_max_bytes))
    response = await either.post("/v1/orders", content=body, headers=checkout_headers(guest))
    assert_problem(response, 413, "payload-too-large")


async def test_a_chunked_order_larger_than_its_limit_is_a_413_problem(
    either: Client, notifier: RecordingNotifier, settings: Settings, demo: Demo, items: Any
) -> None:
    guest = await sign_in(either, notifier)
    body = json.dumps(order(demo, items, note="x" * settings.order_body_max_bytes)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await either.post("/v1/orders", content=chunks(), headers=checkout_headers(guest))
    assert_problem(response, 413, "payload-too-large")


async def test_the_largest_valid_order_fits_its_limit(
    client: Client, guest: GuestHandle, settings: Settings, demo: Demo, items: Any
) -> None:
    """The most lines an order takes, each with a modifier from every group, pretty-printed."""
    item = max(items.values(), key=lambda i: len({m["group"] for m in i["modifiers"]}))
    one_per_group = list({m["group"]: m["id"] for m in item["modifiers"]}.values())
    lines = [
        {"item_id": item["id"], "quantity": 1, "modifier_ids": one_per_group}
        for _ in range(settings.max_lines_per_order)
    ]
    sent = order(demo, items, promo_code="P" * 40)
    sent["lines"] = lines
    body = json.dumps(sent, indent=2)
    assert len(body) <= settings.order_body_max_bytes
    response = await client.post("/v1/orders", content=body, headers=checkout_headers(guest))
    # The promo code is unknown: priced and refused on its merits, not for its size.
    assert_problem(response, 422, "unknown-promo-code")


async def test_a_sign_in_body_of_megabytes_is_never_parsed(client: Client) -> None:
    body = json.dumps({"phone": new_phone(), "padding": "x" * 5_000_000})
    response = await client.post(
        "/v1/auth/otp", content=body, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 413, "payload-too-large")
    assert str(4 * 1024) in problem["detail"]


async def test_a_405_says_which_methods_the_path_takes(client: Client) -> None:
    response = await client.delete("/v1/locations")
    assert_problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["allow"].replace(" ", "").split(",")


async def test_a_body_sent_without_a_length_must_be_json_too(client: Client) -> None:
    """HTTP/2 may send a body with neither Content-Length nor chunked encoding: the edge
    cannot judge it from its headers, so the route refuses it once read."""
    body = json.dumps({"phone": new_phone()}).encode()
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        return next(messages, {"type": "http.disconnect"})

    async def record(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "2", "method": "POST",
        "scheme": "https", "path": "/v1/auth/otp", "raw_path": b"/v1/auth/otp",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
        "server": ("testserver", 443), "headers": [(b"content-type", b"text/plain")],
    }  # fmt: skip
    await client.app(scope, receive, record)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 415
    assert (b"content-type", b"application/problem+json") in start["headers"]
