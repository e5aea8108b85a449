"""Several `regulars serve` and `regulars worker` processes on one PostgreSQL and Redis
(DESIGN §8, issue 24): real processes started as an operator starts them, on free ports,
against the session's embedded PostgreSQL and Redis; every wait bounded, every process killed
at the end even when a test fails.

The ledger still ends at exactly zero with checkouts spread over two API processes; a live
queue on one process sees an order placed through the other; two workers run each job's work
once; SIGTERM drains a stream of checkouts without a half-written order; `/metrics` under
`serve --workers 2` sums both workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from kiosk.live import LiveQueue
from server.auth.notifier import RecordingNotifier
from server.infra.db import connect_once
from server.infra.embedded import free_port
from server.seed.demo import PROGRAM
from server.worker import JOB_LOCK_CLASS, JobClaims, relay_outbox, run_once
from tests.api.helpers import (
    assert_books_balance,
    ledger_state,
    menu_items,
    order_body,
    place,
    redis_state,
)
from tests.conftest import (
    TEST_JWT_SECRET,
    TEST_LIMITS,
    Client,
    Demo,
    GuestHandle,
    Stack,
    give_points,
    sign_in,
)
from tests.integration.test_kiosk_live_queue import FAST, Seen
from tests.integration.test_pos_webhooks import (
    Receiver,
    new_integration,
    pre_order,
    receiver,  # noqa: F401 (the fixture, used by name)
    retire,
    states,
)

REGULARS = [sys.executable, "-m", "server"]
WELCOME = PROGRAM.welcome_bonus_points
# Generous: a loaded 2-core box starts a Python process in seconds, not milliseconds.
START_TIMEOUT_S = 120.0
OUTCOME_TIMEOUT_S = 120.0


# -- processes -----------------------------------------------------------------------------


class Process:
    """One `regulars` command in a session of its own (so its children go with it), its
    output in a file (a pipe nobody reads would fill and stall it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [*REGULARS, *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout_s} s:\n{self.output()}") from None

    def kill(self) -> None:
        """The whole session, without waiting for a drain: the clean-up of last resort."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._out.close()


class Processes:
    """Every process a test starts, killed at its end whatever happened."""

    def __init__(self, stack: Stack, where: Path, **settings: str) -> None:
        self.where = where
        self.started: list[Process] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGULARS_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.env = {
            **env,
            "REGULARS_DATABASE_URL": stack.running.database_url,
            "REGULARS_REDIS_URL": stack.running.redis_url,
            # The test's own tokens verify in every process.
            "REGULARS_JWT_SECRET": TEST_JWT_SECRET,
            "REGULARS_DATA_DIR": str(where),
            # Small pools (a session's PostgreSQL serves every process of it), patient
            # acquires (a loaded box is slow, not wrong).
            "REGULARS_DB_POOL_MIN": "1",
            "REGULARS_DB_POOL_MAX": "6",
            "REGULARS_DB_ACQUIRE_TIMEOUT_S": "60",
            "REGULARS_OTP_SENDS_PER_HOUR": "1000",
            # The suite's raised abuse limits: these tests are about processes, not caps.
            **{f"REGULARS_{name.upper()}": str(value) for name, value in TEST_LIMITS.items()},
            **settings,
        }

    def serve(self, workers: int = 1, server: str = "uvicorn", **env: str) -> tuple[Process, str]:
        """`regulars serve` on a free port, ready (``/readyz`` answers 200); its base URL."""
        port = free_port()
        args = ["serve", "--workers", str(workers), "--server", server]
        process = self._start([*args, "--host", "127.0.0.1", "--port", str(port)], env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.proc.poll() is None, process.output()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    return process, base
            time.sleep(0.2)
        raise AssertionError(f"regulars serve did not become ready:\n{process.output()}")

    def worker(self, **env: str) -> Process:
        return self._start(["worker"], env)

    def _start(self, args: list[str], env: dict[str, str]) -> Process:
        log = self.where / f"{args[0]}-{len(self.started)}.log"
        process = Process(args, {**self.env, **env}, log)
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()


@contextlib.contextmanager
def processes(stack: Stack, where: Path, **settings: str) -> Iterator[Processes]:
    started = Processes(stack, where, **settings)
    try:
        yield started
    finally:
        started.kill_all()


@dataclass
class Fleet:
    """Two API processes and two workers, as a small deployment runs them."""

    apis: list[str]
    workers: list[Process] = field(default_factory=list)


@pytest.fixture(scope="module")
def fleet(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    where = tmp_path_factory.mktemp("fleet")
    # Workers that pass often, slow jobs included, so a test waits seconds, not an hour.
    fast = {
        "REGULARS_WORKER_INTERVAL_S": "0.5",
        "REGULARS_SLOW_JOBS_INTERVAL_S": "1",
        "REGULARS_POS_WEBHOOK_INTERVAL_S": "0.2",
        # The test's till listens on 127.0.0.1, which the SSRF guard refuses otherwise.
        "REGULARS_POS_WEBHOOK_PRIVATE_OK": "true",
    }
    with processes(stack, where) as started:
        workers = [started.worker(**fast), started.worker(**fast)]
        apis = [started.serve()[1], started.serve()[1]]
        for worker in workers:
            assert worker.proc.poll() is None, worker.output()
        yield Fleet(apis, workers)


async def until(
    condition: Callable[[], Any], what: str, timeout_s: float = OUTCOME_TIMEOUT_S
) -> None:
    """Poll ``condition`` (sync or async) until it holds; fail saying ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def refuses(base: str) -> bool:
    """Whether the process at ``base`` refuses new connections (it stopped accepting)."""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            await http.get(base + "/healthz")
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        pass
    return False


def checkout(base: str, guest: GuestHandle, body: dict[str, Any], key: str | None = None) -> Any:
    """POST /v1/orders to the process at ``base``: a coroutine of the response."""
    headers = {**guest.headers, "Idempotency-Key": key or str(uuid.uuid4())}

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            return await http.post("/v1/orders", json=body, headers=headers)

    return post()


# -- two API processes, two workers --------------------------------------------------------


async def test_fifty_spends_over_two_api_processes_end_at_exactly_zero(
    fleet: Fleet, client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """The ledger's concurrency test (tests/api/test_checkout.py) with its 50 checkouts
    spread over both API processes: 50 x 100 points from 1,000, ten succeed, zero is left in
    PostgreSQL and in Redis."""
    await give_points(client, demo, guest, 1000 - WELCOME)
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CIN", 4), points=100)
    responses = await asyncio.gather(*(checkout(fleet.apis[i % 2], guest, body) for i in range(50)))
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 10, codes
    refused = [r.json()["type"] for r in responses if r.status_code != 201]
    assert len(refused) == 40 and all(t.endswith("/insufficient-points") for t in refused)
    assert await ledger_state(services, guest.id) == (0, 1000)
    # Redis mirrors the ledger exactly, or holds no wallet: a refusal Redis made on holds of
    # the other process that PostgreSQL had not committed yet is overruled, PostgreSQL
    # decides, and the wallet is dropped to be loaded afresh (Loyalty.admit_or_replay).
    assert await redis_state(services, guest.id) in ((0, 1000), None)
    again = await checkout(fleet.apis[0], guest, body)  # its next use loads it
    assert again.status_code == 422 and again.json()["type"].endswith("/insufficient-points")
    assert await redis_state(services, guest.id) == (0, 1000)
    await assert_books_balance(services, demo.brand_id)


async def test_a_live_queue_on_one_process_sees_an_order_placed_through_the_other(
    fleet: Fleet, client: Client, guest: GuestHandle, demo: Demo
) -> None:
    station = demo.locations["station"]
    a, b = fleet.apis
    ws_url = (
        a.replace("http", "ws")
        + f"/v1/locations/{station}/queue/live?token="
        + demo.staff["barista"]
    )
    seen = Seen()

    async def refresh() -> bool:
        return True

    queue = LiveQueue(lambda: ws_url, seen.on_event, seen.on_connected, refresh, FAST)
    listening = asyncio.create_task(queue.run())
    try:
        await until(lambda: seen.connected[-1:] == [True], "the live queue on process A")
        items = await menu_items(client, station)
        placed = await checkout(b, guest, order_body(demo, items, ("CRO", 1)))
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["id"]
        async with httpx.AsyncClient(base_url=b, timeout=60, headers=guest.headers) as http:
            paid = await http.post(
                f"/v1/orders/{order_id}/payments",
                json={"provider": "test", "token": "ok"},
                headers={"Idempotency-Key": str(uuid.uuid4())},
            )
        assert paid.status_code == 200, paid.text
        await until(lambda: seen.has_order(order_id), "the order on process A's live queue")
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    events = [e.event for e in seen.events if e.order.id == uuid.UUID(order_id)]
    assert events[0] == "order.placed"


async def _lot_expiring_soon(
    services: Any, demo: Demo, guest_id: uuid.UUID, points: int, in_s: float
) -> None:
    """A lot of ``points`` the guest earned that expires ``in_s`` seconds from now, mirrored
    as a request would: the next passes after that find it past lot expiry's watermark."""
    loyalty = services.loyalty
    async with services.db.transaction() as conn:
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE guest_id = $1", guest_id)
        transfer_id = uuid.uuid4()
        state = await loyalty.ledger.credit(
            conn,
            transfer_id=transfer_id,
            brand_id=demo.brand_id,
            account_id=account_id,
            points=points,
            code="earn",
            source="issued",
            expires_at=datetime.now(UTC) + timedelta(seconds=in_s),
        )
    await loyalty.mirror(guest_id, "credit", transfer_id, state, points)


async def test_two_workers_do_each_scheduled_job_once(
    fleet: Fleet,
    client: Client,
    notifier: RecordingNotifier,
    guest: GuestHandle,
    demo: Demo,
    services: Any,
) -> None:
    """Orders past their payment window, holds past their timeout (some of them both: the two
    jobs race for one hold), made due at one commit, and lots that expire a moment later,
    while both workers pass every half second: each order cancelled once, each hold voided once, each lot expired once,
    and the wallets in Redis agree with the ledger."""
    await give_points(client, demo, guest, 1000)
    start = await ledger_state(services, guest.id)
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CIN", 4), points=20)
    orders = []
    for _ in range(12):
        response = await place(client, guest, body)
        assert response.status_code == 201, response.text
        orders.append(uuid.UUID(response.json()["id"]))
    window_past, both_past, hold_past = orders[:6], orders[6:9], orders[9:]
    lot_guests = [await sign_in(client, notifier) for _ in range(3)]
    async with services.db.transaction() as conn:
        holds = dict(
            await conn.fetch(
                "SELECT id, spend_transfer_id FROM orders WHERE id = ANY($1::uuid[])", orders
            )
        )
        await conn.execute(
            "UPDATE orders SET payment_expires_at = now() - interval '1 second'"
            " WHERE id = ANY($1::uuid[])",
            window_past + both_past,
        )
        timed_out = [holds[order] for order in both_past + hold_past]
        for table, column in (("transfers", "id"), ("open_holds", "transfer_id")):
            await conn.execute(
                f"UPDATE {table} SET timeout_at = now() - interval '1 second'"
                f" WHERE {column} = ANY($1::uuid[])",
                timed_out,
            )
    for lot_guest in lot_guests:
        await _lot_expiring_soon(services, demo, lot_guest.id, 70, in_s=2)

    async def voids() -> dict[uuid.UUID, int]:
        async with services.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT pending_id, count(*) AS n FROM transfers"
                " WHERE phase = 'void_pending' AND pending_id = ANY($1::uuid[]) GROUP BY pending_id",
                list(holds.values()),
            )
        return {row["pending_id"]: row["n"] for row in rows}

    async def expiries() -> list[int]:
        async with services.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT a.guest_id, count(t.id) AS n, coalesce(sum(t.amount), 0) AS points"
                " FROM accounts a LEFT JOIN transfers t"
                "   ON t.debit_account_id = a.id AND t.code = 'expiry'"
                " WHERE a.guest_id = ANY($1::uuid[]) GROUP BY a.guest_id",
                [g.id for g in lot_guests],
            )
        return [row["n"] for row in rows if row["points"] == 70 * row["n"]]

    async def statuses() -> dict[uuid.UUID, str]:
        async with services.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, status FROM orders WHERE id = ANY($1::uuid[])", orders
            )
        return {row["id"]: row["status"] for row in rows}

    async def all_done() -> bool:
        due_holds = [holds[o] for o in window_past + both_past + hold_past]
        voided = await voids()
        cancelled = await statuses()
        return (
            all(voided.get(hold) for hold in due_holds)
            and all(cancelled[o] == "cancelled" for o in window_past + both_past)
            and await expiries() == [1, 1, 1]
        )

    await until(all_done, "the workers to expire, void and cancel what is due")
    # More passes of both workers, each a chance to do something a second time.
    await asyncio.sleep(3)
    assert all(worker.proc.poll() is None for worker in fleet.workers)
    assert await voids() == {hold: 1 for hold in holds.values()}
    assert await expiries() == [1, 1, 1]
    shown = await statuses()
    assert [shown[o] for o in window_past + both_past] == ["cancelled"] * 9
    # A hold voided on its timeout leaves its order to the payment window's job.
    assert [shown[o] for o in hold_past] == ["awaiting_payment"] * 3
    assert await ledger_state(services, guest.id) == start
    assert await redis_state(services, guest.id) in (None, start)
    for lot_guest in lot_guests:
        assert await ledger_state(services, lot_guest.id) == (WELCOME, 0)
        assert await redis_state(services, lot_guest.id) in (None, (WELCOME, 0))
    await assert_books_balance(services, demo.brand_id)


async def test_a_job_another_worker_holds_is_left_to_it(
    fleet: Fleet, client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """While one worker holds a job's claim, no other runs that job, however often it passes;
    the relay likewise. Released, the work is done."""
    items = await menu_items(client, demo.locations["station"])
    order = (await place(client, guest, order_body(demo, items, ("CRO", 1), points=10))).json()
    other = JobClaims(services.settings.database_url, 5)
    try:
        async with other.claim("expired_orders") as mine:
            assert mine
            async with services.db.transaction() as conn:
                await conn.execute(
                    "UPDATE orders SET payment_expires_at = now() - interval '1 second'"
                    " WHERE id = $1",
                    uuid.UUID(order["id"]),
                )
            done = await run_once(services, slow=False, relay=False)
            assert done["expired_orders"] == 0
            await asyncio.sleep(2)  # four passes of each of the fleet's workers
            async with services.db.connection() as conn:
                status = await conn.fetchval(
                    "SELECT status FROM orders WHERE id = $1", uuid.UUID(order["id"])
                )
            assert status == "awaiting_payment"
        relaying = await connect_once(services.settings.database_url)  # another worker's relay
        try:
            async with relaying.transaction():
                await relaying.execute(
                    "SELECT pg_advisory_xact_lock($1::int, hashtext('relay_outbox'))",
                    JOB_LOCK_CLASS,
                )
                async with services.db.transaction() as conn:
                    event = await conn.fetchval(
                        "INSERT INTO outbox (topic, payload) VALUES ('test', '{}'::jsonb)"
                        " RETURNING id"
                    )
                assert await relay_outbox(services, 10) == 0
                async with services.db.connection() as conn:
                    assert await conn.fetchval(
                        "SELECT published_at IS NULL FROM outbox WHERE id = $1", event
                    )
        finally:
            await relaying.close()
    finally:
        await other.close()

    async def cancelled() -> bool:
        async with services.db.connection() as conn:
            status = await conn.fetchval(
                "SELECT status FROM orders WHERE id = $1", uuid.UUID(order["id"])
            )
        return bool(status == "cancelled")

    await until(cancelled, "the order to expire once the claim is released")
    assert await ledger_state(services, guest.id) == (WELCOME, 0)


async def test_two_workers_deliver_each_till_webhook_once(
    fleet: Fleet,
    client: Client,
    services: Any,
    demo: Demo,
    guest: GuestHandle,
    station_menu_item: str,
    receiver: tuple[Receiver, str],  # noqa: F811
) -> None:
    """Both workers fan order events out to a till and deliver them: each event reaches the
    till once (one attempt per webhook-id, never two at the same time), each delivery is
    delivered at its first attempt."""
    till, url = receiver
    integration = await new_integration(services, demo, url, till.secret)
    try:
        for _ in range(4):  # order.placed and order.status each
            await pre_order(client, demo, guest, station_menu_item)

        async def settled() -> bool:
            now = await states(services, integration)
            return len(now) == 8 and all(state == "delivered" for state, _ in now.values())

        await until(settled, "both workers to deliver the till's eight events")
        await asyncio.sleep(2)  # more passes of both workers, each a chance to send again
        delivered = await states(services, integration)
    finally:
        await retire(services, integration)
    assert all(value == ("delivered", 1) for value in delivered.values()), delivered
    assert dict(till.attempts) == dict.fromkeys(delivered, 1)
    assert max(till.most_in_flight.values()) == 1


# -- SIGTERM during a stream of checkouts --------------------------------------------------


@dataclass
class Attempt:
    guest: GuestHandle
    key: str
    status: int | None = None  # None: no answer (refused, reset, cut off)
    order_id: str | None = None


class AccountHold:
    """A transaction that holds a guest's account row: a checkout of theirs waits on it."""

    def __init__(self, conn: asyncpg.Connection, watcher: asyncpg.Connection) -> None:
        self._conn = conn
        self._watcher = watcher

    @classmethod
    async def take(cls, database_url: str, guest_id: uuid.UUID) -> AccountHold:
        conn = await connect_once(database_url)
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1 FROM accounts WHERE guest_id = $1 FOR UPDATE", guest_id)
        return cls(conn, await connect_once(database_url))

    async def waiting(self) -> int:
        """How many backends wait on this one (the held checkout, while it is in flight)."""
        return int(
            await self._watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                self._conn.get_server_pid(),
            )
        )

    async def release(self) -> None:
        for conn in (self._conn, self._watcher):
            if not conn.is_closed():
                await conn.close()  # the held transaction rolls back with its session


async def test_sigterm_drains_a_stream_of_checkouts_without_half_written_orders(
    stack: Stack,
    tmp_path: Path,
    client: Client,
    notifier: RecordingNotifier,
    demo: Demo,
    services: Any,
) -> None:
    """Four clients place checkouts in a loop; two more checkouts wait on account rows the
    test holds. SIGTERM: new connections are refused at once while the process lives on;
    the first waiting checkout, released, is answered 201; the second, held past
    ``shutdown_grace_s``, is cut off and the process exits anyway. Then every 201 is an order
    with its points held, and every other attempt either wrote nothing or wrote all of it (a
    retry with its key returns one order, never a second)."""
    streamers = [await sign_in(client, notifier) for _ in range(4)]
    released, cut_off = await sign_in(client, notifier), await sign_in(client, notifier)
    everyone = [*streamers, released, cut_off]
    for someone in everyone:
        await give_points(client, demo, someone, 5000)
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CIN", 4), points=10)
    attempts: list[Attempt] = []
    database_url = stack.running.database_url

    async def attempt(base: str, who: GuestHandle) -> Attempt:
        tried = Attempt(who, str(uuid.uuid4()))
        attempts.append(tried)
        try:
            response = await checkout(base, who, body, tried.key)
        except httpx.HTTPError:
            return tried
        tried.status = response.status_code
        if response.status_code == 201:
            tried.order_id = response.json()["id"]
        return tried

    # The held checkout must outlast the grace, not end first by its statement timeout.
    bounds = {"REGULARS_SHUTDOWN_GRACE_S": "15", "REGULARS_DB_STATEMENT_TIMEOUT_MS": "300000"}
    with processes(stack, tmp_path, **bounds) as started:
        api, base = started.serve()
        stop_streaming = asyncio.Event()

        async def stream(who: GuestHandle) -> None:
            while not stop_streaming.is_set():
                if (await attempt(base, who)).status is None:
                    await asyncio.sleep(0.05)

        streams = [asyncio.create_task(stream(who)) for who in streamers]
        try:
            await until(lambda: sum(a.status == 201 for a in attempts) >= 20, "checkouts to stream")
            first_hold = await AccountHold.take(database_url, released.id)
            second_hold = await AccountHold.take(database_url, cut_off.id)
            try:
                first = asyncio.create_task(attempt(base, released))
                second = asyncio.create_task(attempt(base, cut_off))
                await until(first_hold.waiting, "the first held checkout to be in flight")
                await until(second_hold.waiting, "the second held checkout to be in flight")
                api.signal(signal.SIGTERM)
                await until(lambda: refuses(base), "new connections to be refused")
                assert api.proc.poll() is None, "exited before its in-flight requests finished"
                assert not first.done() and not second.done()
                # The first held checkout goes on once its account row is free.
                await first_hold.release()
                answered = await asyncio.wait_for(first, OUTCOME_TIMEOUT_S)
                assert answered.status == 201, api.output()
                # The second is still held when the process exits: the grace is a bound.
                assert api.wait(OUTCOME_TIMEOUT_S) in (0, -signal.SIGTERM), api.output()
                cut = await asyncio.wait_for(second, OUTCOME_TIMEOUT_S)
                assert cut.status in (None, 500), api.output()
            finally:
                await first_hold.release()
                await second_hold.release()
        finally:
            stop_streaming.set()
            await asyncio.gather(*streams, return_exceptions=True)

    acknowledged = [a for a in attempts if a.status == 201]
    unanswered = [a for a in attempts if a.status is None]
    # Answered 201, or not at all (refused once the process stopped accepting); the checkout
    # cut off at the grace is answered 500 by uvicorn, whose task it cancels.
    statuses = [a.status for a in attempts if a.guest is not cut_off]
    assert len(acknowledged) >= 21 and set(statuses) <= {201, None}, statuses
    async with services.db.connection() as conn:
        rows = await conn.fetch(
            "SELECT o.id, o.guest_id, o.points_spent, t.id AS hold, t.amount, t.phase"
            " FROM orders o LEFT JOIN transfers t ON t.id = o.spend_transfer_id"
            " WHERE o.guest_id = ANY($1::uuid[])",
            [who.id for who in everyone],
        )
        strays = await conn.fetchval(
            "SELECT count(*) FROM transfers t JOIN accounts a ON a.id = t.debit_account_id"
            " WHERE a.guest_id = ANY($1::uuid[]) AND t.code = 'spend'"
            " AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.spend_transfer_id = t.id)",
            [who.id for who in everyone],
        )
    orders = {str(row["id"]): row for row in rows}
    # Every acknowledged order is there, its points held.
    for tried in acknowledged:
        row = orders[str(tried.order_id)]
        assert (row["points_spent"], row["amount"], row["phase"]) == (10, 10, "pending")
    # Nothing is half-written: no order without its hold, no hold without its order.
    assert all(row["hold"] is not None and row["amount"] == 10 for row in rows)
    assert strays == 0
    # An attempt without an answer wrote all or nothing: its retry finds one order or makes it.
    assert len(orders) <= len(acknowledged) + len(unanswered)
    for tried in unanswered:
        retry = await place(client, tried.guest, body, tried.key)
        assert retry.status_code == 201, retry.text
    for who in everyone:
        async with services.db.connection() as conn:
            placed = await conn.fetchval("SELECT count(*) FROM orders WHERE guest_id = $1", who.id)
        tried_by_them = [a for a in attempts if a.guest is who and a.status in (201, None)]
        assert placed == len(tried_by_them)
        assert await ledger_state(services, who.id) == (WELCOME + 5000 - 10 * placed, 10 * placed)
    await assert_books_balance(services, demo.brand_id)


# -- /metrics under serve --workers 2 -------------------------------------------------------


def _counts_per_process(directory: Path, path: str) -> dict[int, float]:
    """``regulars_requests_total`` of ``path`` in each process's own counter file."""
    counts: dict[int, float] = {}
    for file in directory.glob("counter_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        counts[pid] = sum(
            value
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(file))
            for name, labels in [json.loads(key)[1:3]]
            if name == "regulars_requests_total" and labels.get("path") == path
        )
    return counts


def _total(exposition: str, sample_name: str, path: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == sample_name and sample.labels.get("path") == path
    )


@pytest.mark.parametrize("operator_dir", [True, False], ids=["operator-dir", "own-dir"])
async def test_metrics_under_serve_with_two_workers_add_up_every_worker(
    stack: Stack, tmp_path: Path, operator_dir: bool
) -> None:
    """Requests spread over both worker processes of one `serve --workers 2`; `/metrics`,
    whichever worker answers it, counts all of them. A metrics directory the operator gives
    is emptied at start (a stale file would count again) and keeps the counts after; a
    worker's live gauges go with it. Without one, `serve` uses a directory of its own run
    and removes it at exit."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = MmapedDict(str(directory / "counter_999999.db"))
    labels = ["method", "path", "status_code", "app_name"]
    stale.write_value(
        mmap_key(
            "regulars_requests",
            "regulars_requests_total",
            labels,
            ["GET", "/healthz", "200", "regulars"],
            "Total requests",
        ),
        1000.0,
        0.0,
    )
    stale.close()
    with processes(stack, tmp_path) as started:
        given = {"PROMETHEUS_MULTIPROC_DIR": str(directory)} if operator_dir else {}
        api, base = started.serve(workers=2, **given)
        assert not (directory / "counter_999999.db").exists() or not operator_dir
        children = psutil.Process(api.proc.pid).children(recursive=True)
        workers = {child.pid for child in children}
        if not operator_dir:
            directory = Path(children[0].environ()["PROMETHEUS_MULTIPROC_DIR"])

        async def healthz() -> None:
            # A connection of its own each, so the kernel hands them to either worker.
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                assert (await http.get("/healthz")).status_code == 200

        sent = 0
        for _ in range(100):  # until both workers have answered some
            await asyncio.gather(*(healthz() for _ in range(16)))
            sent += 16
            answered = _counts_per_process(directory, "/healthz")
            if sum(count > 0 for count in answered.values()) >= 2:
                break
        assert sum(count > 0 for count in answered.values()) == 2, answered
        assert {pid for pid, count in answered.items() if count} <= workers
        for _ in range(6):  # whichever worker answers /metrics
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                exposition = (await http.get("/metrics")).text
            assert _total(exposition, "regulars_requests_total", "/healthz") == sent
            assert _total(exposition, "regulars_requests_in_progress", "/healthz") == 0
            assert _total(exposition, "regulars_requests_in_progress", "/metrics") == 1
        api.signal(signal.SIGTERM)
        assert api.wait(OUTCOME_TIMEOUT_S) in (0, -signal.SIGTERM), api.output()
    if not operator_dir:
        assert not directory.exists()
        return
    assert list(directory.glob("gauge_live*.db")) == []  # gone with their processes
    assert sum(_counts_per_process(directory, "/healthz").values()) == sent  # counts stay
