"""The kiosk's live queue client against the real server: it reconnects by itself after the
server goes away, and events published after the reconnect arrive (DESIGN §5, issue: a stale
WebSocket reconnects by itself)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from kiosk.live import LiveEvent, LiveQueue
from kiosk.settings import KioskSettings
from tests.conftest import LiveServer

FAST = KioskSettings(
    ws_backoff_initial_s=0.05, ws_backoff_max_s=0.3, ws_ping_interval_s=1, ws_ping_timeout_s=1
)


async def until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


class Seen:
    """What a LiveQueue reported: its events, and each connect (True) or drop (False)."""

    def __init__(self) -> None:
        self.events: list[LiveEvent] = []
        self.connected: list[bool] = []

    async def on_event(self, event: LiveEvent) -> None:
        self.events.append(event)

    async def on_connected(self, up: bool) -> None:
        self.connected.append(up)

    def has_order(self, order_id: str) -> bool:
        return any(event.order.id == uuid.UUID(order_id) for event in self.events)


def station_id(server: LiveServer) -> str:
    locations = httpx.get(server.base_url + "/v1/locations").json()
    return str(next(loc["id"] for loc in locations if "24/7" in loc["name"]))


def place_and_pay(server: LiveServer, location_id: str) -> str:
    guest = server.new_guest()
    headers = {"Authorization": f"Bearer {guest['token']}"}
    with httpx.Client(base_url=server.base_url, timeout=10, headers=headers) as http:
        menu = http.get(f"/v1/locations/{location_id}/menu").json()
        item = menu["categories"][0]["items"][0]
        order = http.post(
            "/v1/orders",
            json={"location_id": location_id, "lines": [{"item_id": item["id"], "quantity": 1}]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        ).json()
        paid = http.post(
            f"/v1/orders/{order['id']}/payments",
            json={"provider": "test", "token": "ok"},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        )
        assert paid.status_code == 200, paid.text
    return str(order["id"])


def test_live_queue_reconnects_after_the_server_comes_back(live_server: LiveServer) -> None:
    token = live_server.staff_token("barista")
    station = station_id(live_server)
    ws_url = (
        live_server.base_url.replace("http", "ws")
        + f"/v1/locations/{station}/queue/live?token={token}"
    )
    seen = Seen()
    connected = seen.connected

    async def refresh() -> bool:
        return True

    async def scenario() -> Any:
        queue = LiveQueue(lambda: ws_url, seen.on_event, seen.on_connected, refresh, FAST)
        task = asyncio.create_task(queue.run())
        try:
            await until(lambda: connected[-1:] == [True])
            await asyncio.to_thread(live_server.stop)
            await until(lambda: connected[-1:] == [False])
            await asyncio.to_thread(live_server.start)
            await until(lambda: connected.count(True) >= 2)
            order_id = await asyncio.to_thread(place_and_pay, live_server, station)
            await until(lambda: seen.has_order(order_id))
        finally:
            task.cancel()
        return order_id

    order_id = asyncio.run(scenario())
    placed = [e for e in seen.events if e.order.id == uuid.UUID(order_id)]
    assert placed[0].event == "order.placed"


def test_live_queue_reconnects_with_a_fresh_token_when_its_token_expires(
    live_server: LiveServer,
) -> None:
    """The server closes the socket when its token expires (4401); the kiosk refreshes at once
    and reconnects, and events after that arrive over the new socket."""
    station = station_id(live_server)
    base = live_server.base_url.replace("http", "ws") + f"/v1/locations/{station}/queue/live"
    token = [live_server.staff_token("barista", expires_in_s=3)]
    seen = Seen()

    async def refresh() -> bool:
        token[0] = await asyncio.to_thread(live_server.staff_token, "barista")
        return True

    def url() -> str:  # read at each connect: the refreshed token once there is one
        return f"{base}?token={token[0]}"

    async def scenario() -> None:
        queue = LiveQueue(url, seen.on_event, seen.on_connected, refresh, FAST)
        task = asyncio.create_task(queue.run())
        try:
            await until(lambda: seen.connected.count(True) >= 2)
            order_id = await asyncio.to_thread(place_and_pay, live_server, station)
            await until(lambda: seen.has_order(order_id))
        finally:
            task.cancel()

    asyncio.run(scenario())
    # closed at expiry, refreshed, reconnected: no attempt refused with the expired token
    assert seen.connected[:3] == [True, False, True]
