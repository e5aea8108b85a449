"""Orders out to the till (DESIGN §10): outbox → feed and Standard Webhooks, over the real
PostgreSQL, with a real HTTP receiver on a free port (``http.server`` in a thread).

The receiver behaves like a till: it verifies ``webhook-signature`` with the standardwebhooks
package and processes each ``webhook-id`` once, whatever the number of attempts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.di import Provide
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from server.infra.embedded import free_port
from server.infra.identity import Principal
from server.infra.problems import Problem, exception_handlers
from server.pos import webhook_sql
from server.pos.integrations import Integrations, WebhookIn
from server.pos.webhook_controller import PosOrdersFeedController
from server.pos.webhook_model import signed_headers
from server.pos.webhooks import PosWebhooks
from tests.api.helpers import advance, menu_items, order_body, pay, place
from tests.api.staff_support import bearer, other_brand, staff_token
from tests.conftest import Client, Demo, GuestHandle

# Bounded waits, by the clock rather than by rounds: a loaded 2-core CI box once took more than
# 200 rounds of 10 ms to get the first request to the receiver.
WAIT_MAX_S = 20.0


@dataclass
class Receiver:
    """A till's webhook endpoint. ``respond(webhook_id, nth)`` picks the status of the nth
    attempt (1-based) of one webhook-id; with ``hold`` set, the first request to arrive
    hangs until ``hold`` is released."""

    secret: str
    respond: Callable[[str, int], int] = lambda _id, _nth: 204
    hold: threading.Event | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    processed: dict[str, Any] = field(default_factory=dict)
    # The last request of each webhook-id as it arrived (headers, body).
    raw: dict[str, tuple[dict[str, str], bytes]] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    got_one: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: bool = False

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        message_id = headers["webhook-id"]
        with self.lock:
            self.attempts[message_id] += 1
            self.raw[message_id] = (headers, body)
            nth = self.attempts[message_id]
            self.in_flight[message_id] += 1
            self.most_in_flight[message_id] = max(
                self.most_in_flight[message_id], self.in_flight[message_id]
            )
            hold, self.held = (self.hold if not self.held else None), True
        self.got_one.set()
        try:
            if hold is not None:
                hold.wait(10)
            else:
                threading.Event().wait(0.02)  # long enough for a second sender to overlap
            status = self.respond(message_id, nth)
            if status < 300:
                event = Webhook(self.secret).verify(body, headers)  # raises if forged
                with self.lock:
                    self.processed.setdefault(message_id, event)  # dedup on webhook-id
            return status
        finally:
            with self.lock:
                self.in_flight[message_id] -= 1


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    till = Receiver(secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            status = till.handle({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield till, f"http://127.0.0.1:{port}/hooks/regulars"
    if till.hold is not None:
        till.hold.set()
    server.shutdown()
    server.server_close()


def webhooks(services: Any, **overrides: Any) -> PosWebhooks:
    """A deliverer over the session's database with a quick retry ladder."""
    settings = msgspec.structs.replace(
        services.settings,
        **{"pos_webhook_backoff_base_s": 0.001, "pos_webhook_backoff_max_s": 0.005, **overrides},
    )
    return PosWebhooks(settings, services.db, services.pos_integrations.sealer)


async def drain_history(services: Any) -> None:
    """Fan out everything in the outbox (what earlier tests left, or this test's orders). A
    pass skips rows the live test server's relay holds at that moment (SKIP LOCKED), so this
    waits (bounded) until no row is left unfanned, not only until a pass takes none."""
    deadline = time.monotonic() + WAIT_MAX_S
    while True:
        while await services.pos_webhooks.fan_out(500):
            pass
        left = await services.db.fetchval("SELECT count(*) FROM outbox WHERE pos_fanned_at IS NULL")
        if not left:
            return
        assert time.monotonic() < deadline, f"{left} outbox rows were never fanned out"
        await asyncio.sleep(0.01)


async def new_integration(
    services: Any, demo: Demo, url: str | None, secret: str | None, *, in_clear: bool = False
) -> uuid.UUID:
    """An integration whose webhook secret is sealed, as `Integrations.create` stores it; or,
    ``in_clear``, stored as before migration 0028."""
    sealed = services.pos_integrations.sealer.seal(secret) if secret and not in_clear else None
    return uuid.UUID(
        str(
            await services.db.fetchval(
                "INSERT INTO pos_integrations (brand_id, location_id, webhook_url,"
                " webhook_secret, webhook_secret_sealed) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                demo.brand_id,
                demo.locations["station"],
                url,
                secret if in_clear else None,
                sealed,
            )
        )
    )


async def retire(services: Any, integration_id: uuid.UUID) -> None:
    await services.db.fetchval(
        "UPDATE pos_integrations SET disabled_at = now() WHERE id = $1 RETURNING id",
        integration_id,
    )


@contextlib.asynccontextmanager
async def delivering_to(
    services: Any,
    demo: Demo,
    url: str,
    secret: str | None,
    *,
    in_clear: bool = False,
    **overrides: Any,
) -> AsyncIterator[tuple[uuid.UUID, PosWebhooks]]:
    """A till's integration at ``url`` (made after earlier tests' events are fanned out) and a
    deliverer; both retired afterwards, so later tests' deliverers never see them."""
    await drain_history(services)
    integration = await new_integration(services, demo, url, secret, in_clear=in_clear)
    deliverer = webhooks(services, **overrides)
    try:
        yield integration, deliverer
    finally:
        await retire(services, integration)
        await deliverer.aclose()


async def first_request(till: Receiver) -> None:
    """Wait until a request reached ``till`` (bounded)."""
    deadline = time.monotonic() + WAIT_MAX_S
    while not till.got_one.is_set():
        assert time.monotonic() < deadline, "no request reached the till"
        await asyncio.sleep(0.01)


async def pre_order(client: Client, demo: Demo, guest: GuestHandle, sku: str) -> str:
    """A paid pre-order accepted by the barista: order.placed then order.status."""
    items = await menu_items(client, demo.locations["station"])
    response = await place(client, guest, order_body(demo, items, (sku, 1)))
    assert response.status_code == 201, response.text
    order_id = str(response.json()["id"])
    paid = await pay(client, guest, order_id)
    assert paid.status_code == 200, paid.text
    await advance(client, demo, order_id, "accepted")
    return order_id


async def fanned_order(
    client: Client, services: Any, demo: Demo, guest: GuestHandle, sku: str
) -> str:
    """:func:`pre_order`, its events fanned out to the integrations' deliveries."""
    order_id = await pre_order(client, demo, guest, sku)
    await drain_history(services)
    return order_id


async def states(services: Any, integration_id: uuid.UUID) -> dict[str, tuple[str, int]]:
    rows = await services.db.fetch(
        "SELECT id, state, attempts FROM pos_webhook_deliveries WHERE integration_id = $1",
        integration_id,
    )
    return {row["id"]: (row["state"], row["attempts"]) for row in rows}


async def deliver_until_settled(
    services: Any, deliverer: PosWebhooks, integration_id: uuid.UUID
) -> dict[str, tuple[str, int]]:
    deadline = time.monotonic() + WAIT_MAX_S
    while time.monotonic() < deadline:
        now = await states(services, integration_id)
        if now and all(state != "pending" for state, _ in now.values()):
            return now
        await deliverer.deliver_due(50)
        await asyncio.sleep(0.005)
    raise AssertionError(f"deliveries did not settle: {await states(services, integration_id)}")


async def test_a_till_that_fails_twice_gets_each_event_once_signed(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    till, url = receiver
    till.respond = lambda _id, nth: 503 if nth <= 2 else 204
    async with delivering_to(services, demo, url, till.secret) as (integration, deliverer):
        order_id = await fanned_order(client, services, demo, guest, station_menu_item)
        settled = await deliver_until_settled(services, deliverer, integration)

    assert sorted(settled.values()) == [("delivered", 3), ("delivered", 3)]
    # Three attempts each at the door, processed once each after deduplication on webhook-id.
    assert dict(till.attempts) == dict.fromkeys(settled, 3)
    assert set(till.processed) == set(settled)
    events = sorted(till.processed.values(), key=lambda e: e["type"])
    assert [e["type"] for e in events] == ["order.placed", "order.status"]
    assert {e["data"]["id"] for e in events} == {order_id}
    assert events[1]["data"]["status"] == "accepted"


async def test_a_secret_stored_in_the_clear_signs_until_the_worker_seals_it(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    # An integration made before migration 0028 keeps its webhooks signed with its secret,
    # before and after the worker's job seals that secret and clears the stored one.
    till, url = receiver
    clear = delivering_to(services, demo, url, till.secret, in_clear=True)
    async with clear as (integration, deliverer):
        await fanned_order(client, services, demo, guest, station_menu_item)
        before = await deliver_until_settled(services, deliverer, integration)
        assert await services.pos_webhooks.seal_stored_secrets() >= 1
        stored = await services.db.fetchrow(
            "SELECT webhook_secret, webhook_secret_sealed FROM pos_integrations WHERE id = $1",
            integration,
        )
        await fanned_order(client, services, demo, guest, station_menu_item)
        after = await deliver_until_settled(services, deliverer, integration)

    assert stored["webhook_secret"] is None
    assert till.secret.encode() not in bytes(stored["webhook_secret_sealed"])
    assert services.pos_integrations.sealer.open(bytes(stored["webhook_secret_sealed"])) == (
        till.secret
    )
    assert [state for state, _ in before.values()] == ["delivered"] * 2
    assert [state for state, _ in after.values()] == ["delivered"] * 4
    assert set(till.processed) == set(after)  # every one verified by the till with its secret
    assert await services.pos_webhooks.seal_stored_secrets() == 0  # nothing left in the clear


async def test_a_forged_signature_is_refused_by_the_till(receiver: tuple[Receiver, str]) -> None:
    """The receiver really verifies: a body signed with another secret fails."""
    till, _ = receiver
    body = b'{"type":"order.placed"}'
    other = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    headers = signed_headers(other, "msg_1_x", datetime.now(UTC), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(till.secret).verify(body, headers)
    assert Webhook(other).verify(body, headers) == {"type": "order.placed"}


async def test_a_worker_killed_mid_delivery_loses_nothing(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    till, url = receiver
    till.hold = threading.Event()  # the first request hangs until the worker is gone
    await drain_history(services)
    integration = await new_integration(services, demo, url, till.secret)
    # Timeouts far above a request's time even on a loaded CI box (sub-second ones failed
    # there); the lease only has to outlast them.
    dying = webhooks(services, pos_webhook_timeout_s=2.0, pos_webhook_lease_s=2.5)
    survivor = webhooks(services, pos_webhook_timeout_s=2.0, pos_webhook_lease_s=2.5)
    try:
        await fanned_order(client, services, demo, guest, station_menu_item)
        send = asyncio.create_task(dying.deliver_due(1))  # one of the two events
        await first_request(till)
        send.cancel()  # the worker dies with the request in flight: nothing reports back
        with pytest.raises(asyncio.CancelledError):
            await send
        [(claimed_id, _)] = [(k, v) for k, v in till.attempts.items()]
        # While its lease runs, no one else sends it.
        assert claimed_id not in {
            r["id"]
            for r in await services.db.fetch(
                "SELECT id FROM pos_webhook_deliveries WHERE integration_id = $1"
                " AND state = 'pending' AND next_attempt_at <= now()",
                integration,
            )
        }
        till.hold.set()
        settled = await deliver_until_settled(services, survivor, integration)
    finally:
        await retire(services, integration)
        await dying.aclose()
        await survivor.aclose()

    assert settled[claimed_id] == ("delivered", 2)  # sent again after the lease ran out
    assert all(state == "delivered" for state, _ in settled.values())
    assert set(till.processed) == set(settled)  # every event reached the till once


async def test_two_deliverers_never_send_one_event_at_the_same_time(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    till, url = receiver
    await drain_history(services)
    integration = await new_integration(services, demo, url, till.secret)
    till.hold = threading.Event()
    # The first worker's request waits at the till while the second sends seven: its timeout
    # must outlast that on a loaded box (the default 5 s did not, once).
    first = webhooks(services, pos_webhook_timeout_s=60.0, pos_webhook_lease_s=61.0)
    second = webhooks(services)
    try:
        for _ in range(4):
            await pre_order(client, demo, guest, station_menu_item)
        await drain_history(services)
        slow = asyncio.create_task(first.deliver_due(1))  # its till answers slowly
        await first_request(till)
        [held_id] = list(till.attempts)
        # Meanwhile the other worker claims everything it can: all but the event in flight.
        claimed_meanwhile = 0
        while sent := await second.deliver_due(10):
            claimed_meanwhile += sent
        assert claimed_meanwhile == 7
        assert till.attempts[held_id] == 1
        till.hold.set()
        assert await slow == 1
        settled = await states(services, integration)
    finally:
        await retire(services, integration)
        await first.aclose()
        await second.aclose()

    assert len(settled) == 8
    assert all(value == ("delivered", 1) for value in settled.values())
    assert dict(till.attempts) == dict.fromkeys(settled, 1)
    assert max(till.most_in_flight.values()) == 1


async def test_dead_letters_are_listed_and_replayed_by_an_admin(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    till, url = receiver
    till.respond = lambda _id, _nth: 500
    admin = bearer(staff_token(services, demo, "admin"))
    dying = delivering_to(services, demo, url, till.secret, pos_webhook_max_attempts=2)
    async with dying as (integration, deliverer):
        order_id = await fanned_order(client, services, demo, guest, station_menu_item)
        settled = await deliver_until_settled(services, deliverer, integration)
        assert sorted(settled.values()) == [("dead", 2), ("dead", 2)]

        listed = await client.get(
            "/v1/pos/webhook-deliveries/dead",
            params={"integration_id": str(integration)},
            headers=admin,
        )
        assert listed.status_code == 200, listed.text
        letters = listed.json()
        assert {x["webhook_id"] for x in letters} == set(settled)
        assert {x["last_error"] for x in letters} == {"HTTP 500"}
        assert {x["payload"]["data"]["id"] for x in letters} == {order_id}

        barista = bearer(staff_token(services, demo, "barista"))
        assert (
            await client.get("/v1/pos/webhook-deliveries/dead", headers=barista)
        ).status_code == 403

        webhook_id = letters[0]["webhook_id"]
        stranger = await other_brand(services)
        outsider = Principal(
            kind="staff", subject_id=uuid.uuid4(), brand_id=stranger.brand_id, role="admin"
        )
        foreign = bearer(services.tokens.issue(outsider))
        refused = await client.post(
            f"/v1/pos/webhook-deliveries/{webhook_id}/replay", headers=foreign
        )
        assert refused.status_code == 404
        listed_elsewhere = await client.get("/v1/pos/webhook-deliveries/dead", headers=foreign)
        assert listed_elsewhere.json() == []

        till.respond = lambda _id, _nth: 204
        replayed = await client.post(
            f"/v1/pos/webhook-deliveries/{webhook_id}/replay", headers=admin
        )
        assert replayed.status_code == 202, replayed.text
        again = await client.post(f"/v1/pos/webhook-deliveries/{webhook_id}/replay", headers=admin)
        assert again.status_code == 409
        assert again.json()["type"].endswith("/not-dead-letter")
        missing = await client.post("/v1/pos/webhook-deliveries/msg_0_nope/replay", headers=admin)
        assert missing.status_code == 404

        settled = await deliver_until_settled(services, deliverer, integration)
    assert settled[webhook_id] == ("delivered", 1)
    assert webhook_id in till.processed


async def test_a_disabled_integration_gets_nothing_and_the_feed_pages_by_cursor(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
) -> None:
    await drain_history(services)
    start = (await services.pos_webhooks.feed(demo.locations["station"], None, 10_000)).cursor
    integration = await new_integration(services, demo, "http://127.0.0.1:9/x", "whsec_AAAA")
    await retire(services, integration)
    order_id = await fanned_order(client, services, demo, guest, station_menu_item)
    assert await states(services, integration) == {}

    feed = services.pos_webhooks
    page = await feed.feed(demo.locations["station"], start, 1)
    assert [(e.type, e.data["id"]) for e in page.events] == [("order.placed", order_id)]
    following = await feed.feed(demo.locations["station"], page.cursor, 10)
    assert [(e.type, e.data["status"]) for e in following.events] == [("order.status", "accepted")]
    assert int(following.cursor) > int(page.cursor) > int(start)
    idle = await feed.feed(demo.locations["station"], following.cursor, 10)
    assert (idle.events, idle.cursor) == ([], following.cursor)
    # Another location's till hears nothing of it.
    other = await feed.feed(
        demo.locations["city"] if "city" in demo.locations else uuid.uuid4(), start, 10
    )
    assert order_id not in {e.data["id"] for e in other.events}
    for bad in ("-1", "abc"):
        with pytest.raises(Problem) as refused:
            await feed.feed(demo.locations["station"], bad, 10)
        assert refused.value.slug == "invalid-cursor"


async def test_fan_out_consumes_each_outbox_row_once(services: Any) -> None:
    await drain_history(services)
    rows = await services.db.fetch(
        webhook_sql.CLAIM_UNFANNED.replace("FOR UPDATE SKIP LOCKED", ""), 10
    )
    assert rows == []
    assert await services.pos_webhooks.fan_out(10) == 0


async def test_the_feed_route_serves_the_tills_location(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
) -> None:
    """GET /v1/pos/orders over HTTP, with a stand-in for pos-in's signature guard (the
    ``till`` dependency); the integrator registers the route behind the real one."""
    await drain_history(services)
    start = (await services.pos_webhooks.feed(demo.locations["station"], None, 10_000)).cursor
    order_id = await fanned_order(client, services, demo, guest, station_menu_item)

    @dataclass(frozen=True)
    class Till:
        integration_id: uuid.UUID
        brand_id: uuid.UUID
        location_id: uuid.UUID
        vendor_store_id: str | None = None

    till = Till(uuid.uuid4(), demo.brand_id, demo.locations["station"])
    app = Litestar(
        route_handlers=[PosOrdersFeedController],
        dependencies={
            "till": Provide(lambda: till, sync_to_thread=False),
            "pos_webhooks": Provide(lambda: services.pos_webhooks, sync_to_thread=False),
            "settings": Provide(lambda: services.settings, sync_to_thread=False),
        },
        exception_handlers=exception_handlers,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://till"
    ) as http:
        page = await http.get("/v1/pos/orders", params={"after": start})
        assert page.status_code == 200, page.text
        body = page.json()
        assert [(e["type"], e["data"]["id"]) for e in body["events"]] == [
            ("order.placed", order_id),
            ("order.status", order_id),
        ]
        assert body["cursor"] == body["events"][-1]["cursor"]
        empty = (await http.get("/v1/pos/orders", params={"after": body["cursor"]})).json()
        assert empty == {"events": [], "cursor": body["cursor"]}
        bad = await http.get("/v1/pos/orders", params={"after": "x"})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["type"].endswith("/invalid-cursor")


async def test_an_integration_without_a_secret_goes_to_the_dead_letters_at_once(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    till, url = receiver
    async with delivering_to(services, demo, url, None) as (integration, deliverer):
        await fanned_order(client, services, demo, guest, station_menu_item)
        settled = await deliver_until_settled(services, deliverer, integration)
        errors = {
            row["last_error"]
            for row in await services.db.fetch(
                "SELECT last_error FROM pos_webhook_deliveries WHERE integration_id = $1",
                integration,
            )
        }
    assert sorted(settled.values()) == [("dead", 1), ("dead", 1)]
    assert errors == {"the integration has no webhook_secret to sign with"}
    assert not till.attempts  # nothing unsigned ever left


async def test_a_webhook_url_on_our_own_network_gets_nothing(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    """The SSRF guard at connect time (server/pos/webhook_net.py): a URL stored before the
    guard, or a name whose DNS answer turned internal later, resolves to loopback here; the
    worker never connects and the deliveries end as dead letters that say why."""
    till, url = receiver
    await drain_history(services)
    integration = await new_integration(
        services, demo, url.replace("127.0.0.1", "localhost"), till.secret
    )
    deliverer = webhooks(services, pos_webhook_private_ok=False, pos_webhook_max_attempts=2)
    try:
        await fanned_order(client, services, demo, guest, station_menu_item)
        settled = await deliver_until_settled(services, deliverer, integration)
        errors = await services.db.fetch(
            "SELECT last_error FROM pos_webhook_deliveries WHERE integration_id = $1",
            integration,
        )
    finally:
        await deliverer.aclose()
        await retire(services, integration)
    assert sorted(settled.values()) == [("dead", 2), ("dead", 2)]
    assert sum(till.attempts.values()) == 0
    assert [r["last_error"] for r in errors] == [
        "ConnectError: localhost resolves to no public address (127.0.0.1): webhooks are"
        " sent only to the internet"
    ] * 2


async def test_an_admin_replaces_the_webhook_and_the_old_secret_signs_beside_it_for_a_while(
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],
) -> None:
    till, url = receiver
    old_secret = till.secret
    admin = bearer(staff_token(services, demo, "admin"))
    async with delivering_to(services, demo, url, old_secret) as (integration, deliverer):
        route = f"/v1/pos/integrations/{integration}/webhook"
        replaced = await client.put(route, json={"webhook_url": url}, headers=admin)
        assert replaced.status_code == 200, replaced.text
        answer = replaced.json()
        new_secret = answer["webhook_secret"]
        assert new_secret.startswith("whsec_") and new_secret != old_secret
        until = datetime.fromisoformat(answer["previous_secret_valid_until"])
        overlap_s = services.settings.pos_webhook_secret_overlap_s
        assert abs((until - datetime.now(UTC)).total_seconds() - overlap_s) < 60
        stored = await services.db.fetchrow(
            "SELECT webhook_secret, webhook_secret_sealed, webhook_previous_sealed"
            " FROM pos_integrations WHERE id = $1",
            integration,
        )
        sealer = services.pos_integrations.sealer
        assert stored["webhook_secret"] is None
        assert new_secret.encode() not in bytes(stored["webhook_secret_sealed"])
        assert sealer.open(bytes(stored["webhook_previous_sealed"])) == old_secret

        # The till still verifies with the old secret: it takes every delivery meanwhile.
        await fanned_order(client, services, demo, guest, station_menu_item)
        during = await deliver_until_settled(services, deliverer, integration)
        assert [state for state, _ in during.values()] == ["delivered"] * 2
        assert set(till.processed) == set(during)
        headers, body = till.raw[next(iter(during))]
        assert Webhook(new_secret).verify(body, headers)  # and a till on the new one too

        # Once the overlap is over (its end moved to the past), only the new secret signs.
        await services.db.fetchval(
            "UPDATE pos_integrations SET webhook_previous_until = now() - interval '1 second'"
            " WHERE id = $1 RETURNING id",
            integration,
        )
        till.secret = new_secret
        await fanned_order(client, services, demo, guest, station_menu_item)
        after = await deliver_until_settled(services, deliverer, integration)
        fresh = set(after) - set(during)
        assert len(fresh) == 2 and fresh <= set(till.processed)
        headers, body = till.raw[next(iter(fresh))]
        with pytest.raises(WebhookVerificationError):
            Webhook(old_secret).verify(body, headers)

        # Other brands' admins and other roles cannot touch it; a removal stops deliveries.
        stranger = await other_brand(services)
        outsider = Principal(
            kind="staff", subject_id=uuid.uuid4(), brand_id=stranger.brand_id, role="admin"
        )
        foreign = await client.put(
            route, json={"webhook_url": url}, headers=bearer(services.tokens.issue(outsider))
        )
        assert foreign.status_code == 404
        barista = bearer(staff_token(services, demo, "barista"))
        assert (
            await client.put(route, json={"webhook_url": url}, headers=barista)
        ).status_code == 403
        bad = await client.put(route, json={"webhook_url": "ftp://till"}, headers=admin)
        assert bad.status_code == 422, bad.text
        assert bad.json()["type"].endswith("/validation-error")
        # Removed: what was still to be sent goes to the dead letters, saying why; later
        # events are not sent at all (the till polls the feed instead).
        await fanned_order(client, services, demo, guest, station_menu_item)
        removed = await client.put(route, json={"webhook_url": None}, headers=admin)
        assert removed.status_code == 200, removed.text
        assert removed.json()["webhook_secret"] is None
        gone = await deliver_until_settled(services, deliverer, integration)
        await fanned_order(client, services, demo, guest, station_menu_item)
        unsent = await states(services, integration)
    dead = {k: v for k, v in gone.items() if k not in after}
    assert sorted(dead.values()) == [("dead", 1), ("dead", 1)]
    assert unsent == gone
    reasons = await services.db.fetch(
        "SELECT DISTINCT last_error FROM pos_webhook_deliveries WHERE id = ANY($1::text[])",
        list(dead),
    )
    assert [r["last_error"] for r in reasons] == ["the integration has no webhook_url any more"]


async def test_a_webhook_cannot_be_moved_onto_our_own_network(services: Any, demo: Demo) -> None:
    """The SSRF guard of create holds for a replaced URL too (where private URLs are not let)."""
    strict = msgspec.structs.replace(services.settings, pos_webhook_private_ok=False)
    integrations = Integrations(strict, services.db, services.pos_integrations.sealer)
    integration = await new_integration(services, demo, None, None)
    try:
        for url in ("http://till.example/hook", "https://127.0.0.1/hook", "https://10.1.2.3/x"):
            with pytest.raises(Problem) as refused:
                await integrations.set_webhook(
                    demo.brand_id, integration, WebhookIn(webhook_url=url)
                )
            assert refused.value.status == 422 and refused.value.slug == "webhook-url-not-allowed"
        row = await services.db.fetchrow(
            "SELECT webhook_url, webhook_secret_sealed FROM pos_integrations WHERE id = $1",
            integration,
        )
        assert (row["webhook_url"], row["webhook_secret_sealed"]) == (None, None)
        added = await integrations.set_webhook(
            demo.brand_id, integration, WebhookIn(webhook_url="https://till.example/hook")
        )
        assert added.webhook_secret and added.previous_secret_valid_until is None  # none before
    finally:
        await retire(services, integration)
