"""`regulars worker`: scheduled jobs and the outbox relay, in a loop with a bounded batch.

Any number of workers may run on one PostgreSQL (DESIGN §8); each job's pass is claimed, so
two never run the same job at once: the jobs under a PostgreSQL advisory lock per job
(:class:`JobClaims`), the relay under one taken in its own transaction. A worker that finds a
job claimed skips it this pass. Under the claims each job still re-reads what it changes under
a row lock and skips what changed since (an order paid, a hold already voided), so a claim lost
with its connection costs duplicate reads, never a duplicate effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from server.infra.db import connect_once
from server.infra.idempotency import forget_expired
from server.infra.redis import RedisUnavailable, publish_many
from server.lifespan import Services
from server.loyalty.jobs import expire_lots, recount_tier_points, void_timed_out_holds
from server.loyalty.reconcile import RollingReconcile

__all__ = [
    "QUEUE_CHANNEL",
    "JobClaims",
    "Pacer",
    "forget_idempotency_keys",
    "relay_outbox",
    "run_forever",
    "run_once",
]

log = logging.getLogger("regulars.worker")
QUEUE_CHANNEL = "rg:queue:{location_id}"

# Advisory lock keys are (class, object): this class is the worker's jobs ('RGJB'), the object
# the job's name hashed, so `SELECT objid FROM pg_locks WHERE classid = 1380403778` shows them.
JOB_LOCK_CLASS = 0x52474A42
TRY_CLAIM = "SELECT pg_try_advisory_lock($1::int, hashtext($2))"
UNCLAIM = "SELECT pg_advisory_unlock($1::int, hashtext($2))"
# Relaying in order needs one relay at a time: two claiming batches side by side (SKIP LOCKED)
# would publish them in either order. Held until the claim's transaction ends.
TRY_CLAIM_RELAY = "SELECT pg_try_advisory_xact_lock($1::int, hashtext('relay_outbox'))"

CLAIM_OUTBOX = """
SELECT id, topic, payload FROM outbox WHERE published_at IS NULL
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"


async def relay_outbox(services: Services, batch_size: int) -> int:
    """Publish outbox events to Redis pub/sub (live queues); at least once, in order."""
    async with services.db.transaction() as conn:
        if not await conn.fetchval(TRY_CLAIM_RELAY, JOB_LOCK_CLASS):
            return 0  # another worker is relaying
        rows = await conn.fetch(CLAIM_OUTBOX, batch_size)
        if not rows:
            return 0
        messages = [
            (
                QUEUE_CHANNEL.format(location_id=location_id),
                msgspec.json.encode(row["payload"]),
            )
            for row in rows
            if (location_id := row["payload"].get("order", {}).get("location_id"))
        ]
        client = services.gate.client

        async def publish() -> None:
            await publish_many(client, messages)

        await services.gate.run(publish)
        await conn.execute(MARK_PUBLISHED, [row["id"] for row in rows])
    return len(rows)


async def forget_idempotency_keys(services: Services, limit: int) -> int:
    """Forget up to ``limit`` idempotent answers past ``idempotency_retention_days``."""
    days = services.settings.idempotency_retention_days
    async with services.db.connection() as conn:
        return await forget_expired(conn, datetime.now(UTC) - timedelta(days=days), limit)


class JobClaims:
    """Which jobs this worker runs now: a session advisory lock per job name, on a connection
    of its own. Never on a pooled connection: the pool does not reset connections (a lock
    left on one would outlive the job), and a job holding a pooled connection for its lock
    could not take another for its work (server/infra/db.py, NestedAcquire). Used by one
    task at a time."""

    def __init__(self, database_url: str, timeout_s: float) -> None:
        """``timeout_s`` bounds connecting and each claim or release."""
        self._url = database_url
        self._timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None

    @contextlib.asynccontextmanager
    async def claim(self, job: str) -> AsyncIterator[bool]:
        """Yields whether this worker holds ``job`` now (False: another worker runs it, or the
        database is unreachable); released on exit."""
        conn = await self._connection()
        held = conn is not None and bool(await self._call(conn, TRY_CLAIM, job))
        try:
            yield held
        finally:
            if held and conn is not None:
                await self._call(conn, UNCLAIM, job)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _connection(self) -> asyncpg.Connection | None:
        if self._conn is None or self._conn.is_closed():
            try:
                self._conn = await connect_once(self._url, self._timeout_s)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                log.warning("job claims: no database connection: %s", exc)
                return None
        return self._conn

    async def _call(self, conn: asyncpg.Connection, statement: str, job: str) -> object:
        try:
            return await conn.fetchval(statement, JOB_LOCK_CLASS, job, timeout=self._timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The session (and every lock it held) is gone or unusable: start a new one.
            log.warning("job claims: connection lost: %s", exc)
            conn.terminate()
            return None


class Pacer:
    """Drains a backlog job in chunks at a share (``duty``) of the time: after each full
    chunk it rests for as long as keeps the share. Expiring 500 orders and voiding 500 holds
    back to back took ~3 s on a loaded box and stalled the checkouts beside it; as a trickle
    the same work cost their p99 less (docs/PERFORMANCE.md, night session)."""

    def __init__(
        self,
        duty: float,
        chunk: int,
        rest: Callable[[float], Awaitable[bool]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rest(seconds)`` waits and returns False when the worker is stopping."""
        self._duty = duty
        self._chunk = chunk
        self._rest = rest
        self._clock = clock

    async def drain(self, job: Callable[[int], Awaitable[int]], limit: int) -> int:
        """Run ``job(n)`` (which handles up to ``n`` items and returns how many it did) in
        chunks that together ask for ``limit`` at most, as one call would have; stops early
        on a chunk that handled nothing (nothing due, or all of it changed) or when the worker
        stops. A short chunk is no sign of the end: a job skips what changed since it read
        it (an order paid in the meantime)."""
        done = 0
        chunks = -(-limit // self._chunk)
        for index in range(chunks):
            started = self._clock()
            handled = await job(min(self._chunk, limit - index * self._chunk))
            done += handled
            if handled == 0 or index == chunks - 1:
                break
            worked = self._clock() - started
            if self._duty < 1 and not await self._rest(worked * (1 - self._duty) / self._duty):
                break
        return done


async def run_once(
    services: Services,
    *,
    slow: bool = True,
    reconciler: RollingReconcile | None = None,
    pacer: Pacer | None = None,
    relay: bool = True,
    claims: JobClaims | None = None,
) -> dict[str, int]:
    """One pass of every job (``slow``: also the day-scale ones, lot expiry and tier recount;
    ``reconciler``: also a page of wallets compared with the ledger; ``pacer``: the backlog
    jobs drained at its share of the time; ``relay``: the outbox relay too); each job's failure
    is logged and does not stop the others. A job another worker holds is skipped (0);
    ``claims`` are this worker's (a pass without them opens its own)."""
    if claims is None:
        settings = services.settings
        assert settings.database_url
        claims = JobClaims(settings.database_url, settings.db_connect_timeout_s)
        try:
            return await run_once(
                services, slow=slow, reconciler=reconciler, pacer=pacer, relay=relay, claims=claims
            )
        finally:
            await claims.close()
    batch = services.settings.job_batch_size

    async def backlog(job: Callable[[int], Awaitable[int]]) -> int:
        return await (pacer.drain(job, batch) if pacer else job(batch))

    done: dict[str, int] = {}
    jobs: dict[str, Callable[[], Awaitable[int]]] = {
        "expired_orders": lambda: backlog(services.orders.expire_unpaid),
        "voided_holds": lambda: backlog(lambda n: void_timed_out_holds(services.loyalty, n)),
        "revoked_sessions": lambda: services.auth.revocations.resync(batch),
    }
    if relay:
        jobs["relayed_events"] = lambda: relay_outbox(services, batch)
        if services.settings.pos_webhooks_deliver:
            jobs["pos_events"] = lambda: services.pos_webhooks.fan_out(batch)
            jobs["pos_webhooks"] = lambda: services.pos_webhooks.deliver_due(
                services.settings.pos_webhook_batch_size
            )
    if reconciler is not None:
        jobs["reconciled_wallets"] = reconciler.step
    if slow:
        jobs["expired_lots"] = lambda: expire_lots(services.loyalty, batch)
        jobs["recounted_tiers"] = lambda: recount_tier_points(services.loyalty, batch)
        jobs["forgotten_idempotency_keys"] = lambda: backlog(
            lambda n: forget_idempotency_keys(services, n)
        )
        jobs["sealed_webhook_secrets"] = services.pos_webhooks.seal_stored_secrets
    for name, job in jobs.items():
        try:
            async with claims.claim(name) as mine:
                done[name] = await job() if mine else 0
        except RedisUnavailable:
            done[name] = 0
        except Exception:
            log.exception("job %s failed", name)
            done[name] = 0
    return done


async def run_forever(
    services: Services, stop: asyncio.Event, relay_interval_s: float = 0.2
) -> None:
    """The outbox relay and the jobs side by side until ``stop``: a long pass of jobs (a
    backlog drained at its paced share) never holds up the live queues."""
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_relay_until(services, stop, relay_interval_s))
        tasks.create_task(_jobs_until(services, stop))
        if services.settings.pos_webhooks_deliver:
            tasks.create_task(_pos_until(services, stop))


async def _relay_until(services: Services, stop: asyncio.Event, interval_s: float) -> None:
    """Relay the outbox often, so the live queues feel instant."""
    while True:
        try:
            await relay_outbox(services, services.settings.job_batch_size)
        except Exception as exc:
            log.debug("relay skipped: %s", exc)
        if not await _rest(stop, interval_s):
            return


async def _pos_until(services: Services, stop: asyncio.Event) -> None:
    """Fan order events out to tills and deliver due webhooks, on their own beat: a slow
    till's timeouts never hold up the live queues or the jobs."""
    settings = services.settings
    while True:
        try:
            await services.pos_webhooks.fan_out(settings.job_batch_size)
            await services.pos_webhooks.deliver_due(settings.pos_webhook_batch_size)
        except Exception as exc:
            log.warning("pos webhooks pass failed: %s", exc)
        if not await _rest(stop, settings.pos_webhook_interval_s):
            return


async def _jobs_until(services: Services, stop: asyncio.Event) -> None:
    """A pass of the jobs every interval, counted from the start of the last pass."""
    settings = services.settings
    loop = asyncio.get_running_loop()
    reconciler = RollingReconcile(
        services.loyalty, settings.reconcile_grace_s, settings.job_batch_size
    )
    pacer = Pacer(settings.worker_duty, settings.job_chunk_size, lambda s: _rest(stop, s))
    assert settings.database_url
    claims = JobClaims(settings.database_url, settings.db_connect_timeout_s)
    next_slow = 0.0
    try:
        while True:
            started = loop.time()
            # Lots expire by the day and tiers move slowly: their scans run far less often than
            # the payment window and hold timeouts need.
            slow = started >= next_slow
            done = await run_once(
                services, slow=slow, reconciler=reconciler, pacer=pacer, relay=False, claims=claims
            )
            if any(done.values()):
                log.info("worker pass in %.1f s: %s", loop.time() - started, done)
            if slow:
                next_slow = started + settings.slow_jobs_interval_s
            if not await _rest(stop, started + settings.worker_interval_s - loop.time()):
                return
    finally:
        await claims.close()


async def _rest(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` (or not at all when they are not positive); False once ``stop`` is set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return not stop.is_set()
