"""The location's pre-order queue: the list, and the live feed over a WebSocket through Redis."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from server.auth.notifier import RecordingNotifier
from tests.api.helpers import advance, menu_items, pay, place
from tests.api.staff_support import bearer, staff_token
from tests.conftest import Client, Demo, LiveServer, sign_in


async def test_queue_lists_open_orders_by_pickup(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    async with services.db.transaction() as conn:
        await conn.execute("UPDATE guests SET last_name = 'Weber' WHERE id = $1", guest.id)
    station = demo.locations["station"]
    items = await menu_items(client, station)
    body = {"location_id": str(station), "lines": [{"item_id": items["CRO"]["id"], "quantity": 1}]}
    placed = []
    for _ in range(2):
        order = (await place(client, guest, body)).json()
        assert (await pay(client, guest, order["id"])).status_code == 200
        placed.append(order["id"])
    unpaid = (await place(client, guest, body)).json()

    response = await client.get(
        f"/v1/locations/{station}/queue", headers=bearer(demo.staff["barista"])
    )
    assert response.status_code == 200, response.text
    queue = response.json()
    ours = [o for o in queue if o["guest_id"] == str(guest.id)]
    assert {o["id"] for o in ours} == set(placed)
    assert unpaid["id"] not in {o["id"] for o in queue}
    assert ours[0]["guest_display_name"] == "Test W." and ours[0]["lines"]
    pickups = [o["pickup_at"] for o in queue]
    assert pickups == sorted(pickups)

    await advance(client, demo, placed[0], "accepted", "preparing", "ready", "completed")
    after = await client.get(
        f"/v1/locations/{station}/queue", headers=bearer(demo.staff["barista"])
    )
    assert placed[0] not in {o["id"] for o in after.json()}


async def test_queue_of_another_location_is_not_found(
    client: Client, demo: Demo, services: Any
) -> None:
    barista = demo.staff["barista"]  # mitte and station
    kreuzberg = await client.get(
        f"/v1/locations/{demo.locations['kreuzberg']}/queue", headers=bearer(barista)
    )
    assert kreuzberg.status_code == 404
    unknown = await client.get(f"/v1/locations/{uuid.uuid4()}/queue", headers=bearer(barista))
    assert unknown.status_code == 404
    manager = staff_token(services, demo, "manager")  # the whole brand
    everywhere = await client.get(
        f"/v1/locations/{demo.locations['kreuzberg']}/queue", headers=bearer(manager)
    )
    assert everywhere.status_code == 200


def _station(http: httpx.Client) -> str:
    locations = http.get("/v1/locations").json()
    return str(next(loc["id"] for loc in locations if "24/7" in loc["name"]))


def test_live_queue_receives_order_placed(live_server: LiveServer) -> None:
    """A guest pays; the worker relays the outbox to Redis; the kiosk's socket hears it."""
    token = live_server.staff_token("barista")
    guest = live_server.new_guest()
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        station = _station(http)
        menu = http.get(f"/v1/locations/{station}/menu").json()
        croissant = next(i for c in menu["categories"] for i in c["items"] if i["sku"] == "CRO")
        url = f"ws://127.0.0.1:{live_server.port}/v1/locations/{station}/queue/live?token={token}"
        with connect(url, open_timeout=10) as socket:
            hello = json.loads(socket.recv(timeout=10))
            assert hello == {"event": "subscribed", "location_id": station}
            headers = {"Authorization": f"Bearer {guest['token']}"}
            order = http.post(
                "/v1/orders",
                json={
                    "location_id": station,
                    "lines": [{"item_id": croissant["id"], "quantity": 1}],
                },
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            ).json()
            paid = http.post(
                f"/v1/orders/{order['id']}/payments",
                json={"provider": "test", "token": "ok"},
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            )
            assert paid.status_code == 200, paid.text
            deadline = time.monotonic() + 15
            while True:
                message = json.loads(socket.recv(timeout=max(deadline - time.monotonic(), 0.1)))
                if message.get("order", {}).get("id") == order["id"]:
                    break
            assert message["event"] == "order.placed"
            assert message["order"]["status"] == "placed"
            assert message["order"]["location_id"] == station


def test_live_queue_refuses_other_locations_and_bad_tokens(live_server: LiveServer) -> None:
    token = live_server.staff_token("barista")  # mitte and station
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        locations = http.get("/v1/locations").json()
    kreuzberg = next(loc["id"] for loc in locations if "Kreuzberg" in loc["name"])
    base = f"ws://127.0.0.1:{live_server.port}/v1/locations"
    with pytest.raises(InvalidStatus):
        connect(f"{base}/{kreuzberg}/queue/live?token={token}", open_timeout=10)
    station = next(loc["id"] for loc in locations if "24/7" in loc["name"])
    for query in ("", "?token=not-a-token"):
        with pytest.raises(InvalidStatus):
            connect(f"{base}/{station}/queue/live{query}", open_timeout=10)


def test_live_queue_closes_when_its_token_expires(live_server: LiveServer) -> None:
    """A socket must not outlive the token that opened it: closed with 4401 at expiry, so the
    kiosk reconnects with a fresh token (and a revoked one can no longer listen)."""
    token = live_server.staff_token("barista", expires_in_s=3)
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        station = _station(http)
    url = f"ws://127.0.0.1:{live_server.port}/v1/locations/{station}/queue/live?token={token}"
    with connect(url, open_timeout=10) as socket:
        assert json.loads(socket.recv(timeout=10))["event"] == "subscribed"
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=15)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert closed.value.rcvd.reason == "the access token expired"
