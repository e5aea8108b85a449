"""`regulars worker`: scheduled jobs and the outbox relay, in a loop with a bounded batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec

from server.infra.redis import RedisUnavailable
from server.lifespan import Services
from server.loyalty.jobs import expire_lots, recount_tier_points, void_timed_out_holds
from server.loyalty.reconcile import RollingReconcile

__all__ = ["QUEUE_CHANNEL", "relay_outbox", "run_forever", "run_once"]

log = logging.getLogger("regulars.worker")
QUEUE_CHANNEL = "rg:queue:{location_id}"

CLAIM_OUTBOX = """
SELECT id, topic, payload FROM outbox WHERE published_at IS NULL
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"


async def relay_outbox(services: Services, batch_size: int) -> int:
    """Publish outbox events to Redis pub/sub (live queues); at least once, in order."""
    async with services.db.transaction() as conn:
        rows = await conn.fetch(CLAIM_OUTBOX, batch_size)
        if not rows:
            return 0
        client = services.gate.client

        async def publish() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for row in rows:
                    location_id = row["payload"].get("order", {}).get("location_id")
                    if location_id:
                        channel = QUEUE_CHANNEL.format(location_id=location_id)
                        pipe.publish(channel, msgspec.json.encode(row["payload"]))
                await pipe.execute()

        await services.gate.run(publish)
        await conn.execute(MARK_PUBLISHED, [row["id"] for row in rows])
    return len(rows)


async def run_once(
    services: Services, *, slow: bool = True, reconciler: RollingReconcile | None = None
) -> dict[str, int]:
    """One pass of every job (``slow``: also the day-scale ones, lot expiry and tier recount;
    ``reconciler``: also a page of wallets compared with the ledger); each job's failure is
    logged and does not stop the others."""
    batch = services.settings.job_batch_size
    done: dict[str, int] = {}
    jobs: dict[str, Callable[[], Awaitable[int]]] = {
        "expired_orders": lambda: services.orders.expire_unpaid(batch),
        "voided_holds": lambda: void_timed_out_holds(services.loyalty, batch),
        "relayed_events": lambda: relay_outbox(services, batch),
    }
    if reconciler is not None:
        jobs["reconciled_wallets"] = reconciler.step
    if slow:
        jobs["expired_lots"] = lambda: expire_lots(services.loyalty, batch)
        jobs["recounted_tiers"] = lambda: recount_tier_points(services.loyalty, batch)
    for name, job in jobs.items():
        try:
            done[name] = await job()
        except RedisUnavailable:
            done[name] = 0
        except Exception:
            log.exception("job %s failed", name)
            done[name] = 0
    return done


async def run_forever(
    services: Services, stop: asyncio.Event, relay_interval_s: float = 0.2
) -> None:
    """Relay the outbox often (live queues feel instant) and run the slower jobs every interval."""
    loop = asyncio.get_running_loop()
    next_jobs = next_slow = 0.0
    reconciler = RollingReconcile(
        services.loyalty, services.settings.reconcile_grace_s, services.settings.job_batch_size
    )
    while not stop.is_set():
        if loop.time() >= next_jobs:
            # Lots expire by the day and tiers move slowly: their scans run far less often
            # than the payment window and hold timeouts need.
            slow = loop.time() >= next_slow
            done = await run_once(services, slow=slow, reconciler=reconciler)
            if any(done.values()):
                log.info("worker pass: %s", done)
            next_jobs = loop.time() + services.settings.worker_interval_s
            if slow:
                next_slow = loop.time() + services.settings.slow_jobs_interval_s
        else:
            try:
                await relay_outbox(services, services.settings.job_batch_size)
            except Exception as exc:
                log.debug("relay skipped: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), relay_interval_s)
