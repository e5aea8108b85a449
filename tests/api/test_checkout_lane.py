"""The checkout's lane (server/orders/lane.py) answers exactly as the controller does.

Every case runs twice, through an app with the lane and through one without it (both over the
same database), and the answers must match: status, content type and, for a refusal, the
whole problem. The lane must also really serve the plain checkout, and pass on the rest.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.settings import Settings
from tests.api.helpers import menu_items
from tests.conftest import Client, Demo, GuestHandle, app_client, sign_in


@pytest.fixture
async def without_lane(settings: Settings, notifier: RecordingNotifier) -> AsyncIterator[Client]:
    """The same app with every checkout going through Litestar (Settings.checkout_lane off)."""
    async with app_client(
        msgspec.structs.replace(settings, checkout_lane=False), notifier
    ) as test_client:
        yield test_client


# What a case sends: (headers, body) for a guest, a fresh key and the station's menu.
Request = tuple[dict[str, str], bytes | Any]
Case = Callable[[GuestHandle, str, dict[str, Any], Demo], Request]


def order(demo: Demo, items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    line = {"item_id": items["CRO"]["id"], "quantity": extra.pop("quantity", 1)}
    return {"location_id": str(demo.locations["station"]), "lines": [line], **extra}


def as_json(headers: dict[str, str], payload: Any) -> Request:
    return {**headers, "Content-Type": "application/json"}, json.dumps(payload).encode()


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """A body without Content-Length, in two chunks."""
    yield body[:10]
    yield body[10:]


def keyed(guest: GuestHandle, key: str) -> dict[str, str]:
    return {**guest.headers, "Idempotency-Key": key}


CASES: dict[str, Case] = {
    "plain checkout": lambda g, k, i, d: as_json(keyed(g, k), order(d, i)),
    "with points": lambda g, k, i, d: as_json(keyed(g, k), order(d, i, points_to_spend=40)),
    "more points than the guest has": lambda g, k, i, d: as_json(
        keyed(g, k), order(d, i, points_to_spend=10**9)
    ),
    "unknown location": lambda g, k, i, d: as_json(
        keyed(g, k), {**order(d, i), "location_id": str(uuid.uuid4())}
    ),
    "unknown item": lambda g, k, i, d: as_json(
        keyed(g, k), {**order(d, i), "lines": [{"item_id": str(uuid.uuid4()), "quantity": 1}]}
    ),
    "pickup without a timezone": lambda g, k, i, d: as_json(
        keyed(g, k), order(d, i, pickup_at="2031-01-01T10:00:00")
    ),
    "unknown promo code": lambda g, k, i, d: as_json(keyed(g, k), order(d, i, promo_code="NOPE")),
    "too many lines": lambda g, k, i, d: as_json(
        keyed(g, k), {**order(d, i), "lines": [order(d, i)["lines"][0]] * 51}
    ),
    "quantity as a string": lambda g, k, i, d: as_json(keyed(g, k), order(d, i, quantity="2")),
    "zero quantity": lambda g, k, i, d: as_json(keyed(g, k), order(d, i, quantity=0)),
    "unknown field": lambda g, k, i, d: as_json(keyed(g, k), {**order(d, i), "tip": 5}),
    "not an object": lambda g, k, i, d: as_json(keyed(g, k), [order(d, i)]),
    "malformed JSON": lambda g, k, i, d: (
        {**keyed(g, k), "Content-Type": "application/json"},
        b'{"location_id": ',
    ),
    "not UTF-8": lambda g, k, i, d: (
        {**keyed(g, k), "Content-Type": "application/json"},
        b'{"location_id": "\xff"}',
    ),
    "text/plain body": lambda g, k, i, d: (
        {**keyed(g, k), "Content-Type": "text/plain"},
        json.dumps(order(d, i)).encode(),
    ),
    "chunked body": lambda g, k, i, d: (
        {**keyed(g, k), "Content-Type": "application/json"},
        chunked(json.dumps(order(d, i)).encode()),
    ),
    "too long for the route": lambda g, k, i, d: as_json(
        keyed(g, k), {**order(d, i), "note": "x" * 16 * 1024}
    ),
    "nested 990 deep": lambda g, k, i, d: (
        {**keyed(g, k), "Content-Type": "application/json"},
        json.dumps(order(d, i))[:-1].encode() + b', "note": ' + b"[" * 990 + b"]" * 990 + b"}",
    ),
    "promo code not UTF-8": lambda g, k, i, d: (
        {**keyed(g, k), "Content-Type": "application/json"},
        json.dumps(order(d, i, promo_code="AB")).encode().replace(b"AB", b"A\xffB"),
    ),
    "no Idempotency-Key": lambda g, k, i, d: as_json(g.headers, order(d, i)),
    "blank Idempotency-Key": lambda g, k, i, d: as_json(keyed(g, "   "), order(d, i)),
    "overlong Idempotency-Key": lambda g, k, i, d: as_json(keyed(g, "k" * 300), order(d, i)),
    "no token": lambda g, k, i, d: as_json({"Idempotency-Key": k}, order(d, i)),
    "forged token": lambda g, k, i, d: as_json(
        {"Authorization": f"Bearer {g.token}x", "Idempotency-Key": k}, order(d, i)
    ),
    "not a bearer token": lambda g, k, i, d: as_json(
        {"Authorization": f"Basic {g.token}", "Idempotency-Key": k}, order(d, i)
    ),
    "lower-case bearer": lambda g, k, i, d: as_json(
        {"Authorization": f"bearer {g.token}", "Idempotency-Key": k}, order(d, i)
    ),
    "staff token": lambda g, k, i, d: as_json(
        {"Authorization": f"Bearer {d.staff['barista']}", "Idempotency-Key": k}, order(d, i)
    ),
}

# Fields of a placed order that differ between two orders by construction.
_OWN = {"id", "guest_id", "created_at", "payment_expires_at", "pickup_at", "lines"}


async def send(client: Client, request: Request) -> httpx.Response:
    headers, body = request
    # Bounded: a lane that swallowed the body would leave Litestar waiting for it forever.
    async with asyncio.timeout(30):
        return await client.post("/v1/orders", content=body, headers=headers)


def comparable(response: httpx.Response) -> tuple[int, str, Any]:
    body = response.json()
    if response.status_code == 201:
        lines = [{k: v for k, v in line.items() if k != "id"} for line in body["lines"]]
        body = {k: v for k, v in body.items() if k not in _OWN} | {"lines": lines}
    elif "detail" in body:
        # A slot number or an id may differ between the two requests; the words may not.
        body["detail"] = re.sub(r"[0-9a-f-]{36}", "<id>", body["detail"])
    return response.status_code, response.headers["content-type"], body


async def served_by(client: Client) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    found = re.findall(r'regulars_checkout_lane_total\{served_by="(\w+)"\} ([\d.e+]+)', text)
    return {who: float(n) for who, n in found}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_lane_answers_as_the_controller_does(
    case: str,
    client: Client,
    without_lane: Client,
    notifier: RecordingNotifier,
    demo: Demo,
) -> None:
    items = await menu_items(client, demo.locations["station"])
    answers = []
    for app in (client, without_lane):
        guest = await sign_in(app, notifier)
        answers.append(
            comparable(await send(app, CASES[case](guest, str(uuid.uuid4()), items, demo)))
        )
    assert answers[0] == answers[1]


async def test_the_lane_serves_the_checkout_and_passes_on_the_rest(
    client: Client, guest: GuestHandle, demo: Demo
) -> None:
    items = await menu_items(client, demo.locations["station"])
    before = await served_by(client)
    placed = await send(client, as_json(keyed(guest, "lane-1"), order(demo, items)))
    assert placed.status_code == 201, placed.text
    after_one = await served_by(client)
    assert after_one["lane"] == before.get("lane", 0) + 1
    refused = await send(client, as_json(guest.headers, order(demo, items)))
    assert refused.status_code == 400
    after_two = await served_by(client)
    assert after_two["litestar"] == before.get("litestar", 0) + 1
    assert after_two["lane"] == after_one["lane"]


async def test_a_retry_through_the_lane_replays_the_same_order(
    client: Client, guest: GuestHandle, demo: Demo
) -> None:
    items = await menu_items(client, demo.locations["station"])
    request = as_json(keyed(guest, "lane-retry"), order(demo, items, points_to_spend=30))
    first, again = await send(client, request), await send(client, request)
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    changed = as_json(keyed(guest, "lane-retry"), order(demo, items, points_to_spend=31))
    reused = await send(client, changed)
    assert reused.status_code == 422, reused.text
    assert reused.json()["type"].endswith("/idempotency-conflict")


async def test_the_lane_keeps_the_request_id_and_the_route_metrics(
    client: Client, guest: GuestHandle, demo: Demo
) -> None:
    items = await menu_items(client, demo.locations["station"])
    headers, body = as_json(keyed(guest, str(uuid.uuid4())), order(demo, items))
    placed = await client.post(
        "/v1/orders", content=body, headers={**headers, "X-Request-Id": "till-7-rush-0001"}
    )
    assert placed.status_code == 201, placed.text
    assert placed.headers["x-request-id"] == "till-7-rush-0001"
    metrics = (await client.get("/metrics")).text
    assert re.search(
        r'regulars_requests_total\{app_name="regulars",method="POST",path="/v1/orders",'
        r'status_code="201"\} [1-9]',
        metrics,
    )


async def test_a_guest_who_leaves_mid_body_leaves_nothing_behind(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = json.dumps(order(demo, items)).encode()
    key = f"lane-gone-{uuid.uuid4()}"
    messages = iter(
        [
            {"type": "http.request", "body": body[:20], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        return next(messages, {"type": "http.disconnect"})

    async def record(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/orders", "raw_path": b"/v1/orders", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        "headers": [
            (b"authorization", f"Bearer {guest.token}".encode()),
            (b"idempotency-key", key.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }  # fmt: skip
    async with asyncio.timeout(30):
        await client.app(scope, receive, record)
    async with services.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE guest_id = $1", guest.id) == 0
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key) == 0
