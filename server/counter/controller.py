"""The counter's routes: scan, enrol, accruals, redemptions and the location's live queue."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from uuid import UUID

from litestar import Controller, Response, WebSocket, get, post, websocket
from litestar.di import NamedDependency
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath, JSONBody

from server.auth.tokens import TokenIssuer
from server.catalog.locations import Locations
from server.counter.live import LiveQueues, queue_hello
from server.counter.points import CounterPoints
from server.counter.service import CounterDesk
from server.infra.http import IdempotencyKeyHeader, stored_response
from server.infra.idempotency import require_key
from server.infra.identity import Principal, requires_staff
from server.infra.openapi import BEARER, answer, problems
from server.infra.problems import Problem
from shared import contract
from shared.contract import EnrolIn

__all__ = [
    "ROUTES",
    "CounterController",
    "KioskController",
    "QueueController",
]

_TRANSFER = answer(contract.Transfer, "The transfer")

# WebSocket close codes: 4000 + the HTTP status the refusal would have had.
WS_UNAUTHENTICATED = 4401
WS_NOT_FOUND = 4404


class KioskController(Controller):
    path = "/v1/kiosk"
    guards = [requires_staff]
    security = BEARER
    tags = ["kiosk"]

    @post("/scan", status_code=200, responses=problems(429))
    async def scan(
        self,
        desk: NamedDependency[CounterDesk],
        principal: NamedDependency[Principal],
        data: JSONBody[contract.ScanIn],
    ) -> contract.GuestCard:
        """The guest card for a QR code, a 12-digit card number or a phone, in one round trip."""
        return await desk.scan(principal, data)

    @post(
        "/guests",
        responses={
            201: answer(contract.GuestCard, "A new guest, enrolled"),
            200: answer(contract.GuestCard, "Already a guest: their card"),
        },
    )
    async def enrol(
        self,
        desk: NamedDependency[CounterDesk],
        principal: NamedDependency[Principal],
        data: JSONBody[EnrolIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """Enrol a guest by phone at the counter (201; 200 if already a guest): their card."""
        return stored_response(await desk.enrol(principal, data, require_key(idempotency_key)))


class CounterController(Controller):
    path = "/v1"
    guards = [requires_staff]
    security = BEARER
    tags = ["kiosk"]

    @post(
        "/guests/{guest_id:uuid}/accruals",
        status_code=201,
        responses={**problems(409), 201: _TRANSFER},
    )
    async def accrue(
        self,
        counter_points: NamedDependency[CounterPoints],
        principal: NamedDependency[Principal],
        guest_id: FromPath[UUID],
        data: JSONBody[contract.AccrualIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """Points for money paid at the till; once per key and once per receipt."""
        key = require_key(idempotency_key)
        return stored_response(await counter_points.accrue(principal, guest_id, data, key))

    @post(
        "/guests/{guest_id:uuid}/redemptions",
        status_code=201,
        responses={**problems(429), 201: _TRANSFER},
    )
    async def reserve(
        self,
        counter_points: NamedDependency[CounterPoints],
        principal: NamedDependency[Principal],
        guest_id: FromPath[UUID],
        data: JSONBody[contract.RedemptionIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """Hold points for a redemption; then post or void it."""
        key = require_key(idempotency_key)
        return stored_response(await counter_points.reserve(principal, guest_id, data, key))

    @post("/redemptions/{transfer_id:uuid}/post", status_code=200, responses=problems(409))
    async def post_redemption(
        self,
        counter_points: NamedDependency[CounterPoints],
        principal: NamedDependency[Principal],
        transfer_id: FromPath[UUID],
    ) -> contract.Transfer:
        """Make a held redemption final (exactly once; asking again answers the same)."""
        return await counter_points.resolve(principal, transfer_id, post=True)

    @post("/redemptions/{transfer_id:uuid}/void", status_code=200, responses=problems(409))
    async def void_redemption(
        self,
        counter_points: NamedDependency[CounterPoints],
        principal: NamedDependency[Principal],
        transfer_id: FromPath[UUID],
    ) -> contract.Transfer:
        """Release a held redemption (exactly once; asking again answers the same)."""
        return await counter_points.resolve(principal, transfer_id, post=False)


class QueueController(Controller):
    path = "/v1/locations"
    tags = ["kiosk"]

    @get("/{location_id:uuid}/queue", guards=[requires_staff], security=BEARER)
    async def queue(
        self,
        desk: NamedDependency[CounterDesk],
        principal: NamedDependency[Principal],
        location_id: FromPath[UUID],
    ) -> list[contract.Order]:
        """Open pre-orders of the location (placed … ready), soonest pickup first."""
        return await desk.queue(principal, location_id)

    @websocket("/{location_id:uuid}/queue/live")
    async def live(
        self,
        socket: WebSocket[Any, Any, Any],
        locations: NamedDependency[Locations],
        live_queues: NamedDependency[LiveQueues],
        location_id: FromPath[UUID],
    ) -> None:
        """Order events of the location as they happen (token in ``?token=``).

        The first message is ``{"event": "subscribed"}``; then each
        ``{"event": "order.placed" | "order.status", "order": {…}}``. The socket closes with
        4401 when the token expires: reconnect with a fresh one.
        """
        principal = socket.scope.get("user")
        if not isinstance(principal, Principal) or principal.kind != "staff":
            await socket.close(code=WS_UNAUTHENTICATED, reason="staff token required")
            return
        try:
            await locations.of_staff(principal, location_id)
        except Problem:
            await socket.close(code=WS_NOT_FOUND, reason="location not found")
            return
        tokens: TokenIssuer = socket.app.state.tokens
        expires_at = tokens.expires_at(socket.scope["auth"])
        await socket.accept()
        async with live_queues.listen(location_id) as events:
            await socket.send_text(queue_hello(location_id))
            await _pump(socket, events, expires_at)


async def _pump(
    socket: WebSocket[Any, Any, Any], events: asyncio.Queue[str], expires_at: float
) -> None:
    """Forward events until the client goes away (anything it sends is ignored) or its access
    token expires (Unix seconds ``expires_at``). Then the socket closes with 4401, and the
    kiosk reconnects with a fresh token: a socket must not outlive the token that opened it,
    or a staff member whose access ended would go on seeing the queue."""

    async def drain_client() -> None:
        while True:
            await socket.receive_data(mode="text")

    client = asyncio.create_task(drain_client())
    getter: asyncio.Task[str] | None = None
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + expires_at - time.time()):
            while not client.done():
                getter = asyncio.create_task(events.get())
                done, _ = await asyncio.wait({getter, client}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    break
                await socket.send_text(getter.result())
    except TimeoutError:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client left first
            await socket.close(code=WS_UNAUTHENTICATED, reason="the access token expired")
    except WebSocketDisconnect:
        pass
    finally:
        for task in (getter, client):
            if task is not None:
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
            await client


# The counter's routes, for create_app to register.
ROUTES = [KioskController, CounterController, QueueController]
