"""`regulars reconcile`, and the worker a page per pass: make Redis wallets agree with the ledger.

A wallet is repaired when its posted balance or its holds differ from PostgreSQL. Holds Redis
has but PostgreSQL does not are orphans (a process died between the Redis reserve and the
commit); they are voided once older than the grace period, so checkouts in flight are spared.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from uuid import UUID

from server.loyalty import sql
from server.loyalty.service import Loyalty

__all__ = ["Repair", "RollingReconcile", "reconcile", "reconcile_page"]

log = logging.getLogger("regulars.reconcile")

# A resolved transfer's marker in a wallet's holds hash makes a repeated mirror of it answer
# 'exists'. Mirrors come within seconds of their commit; one a day late is no retry, and
# without its marker it gets 'miss' and a reload from the ledger. Small hashes are left alone.
MARKER_AGE_MS = 86_400_000
PRUNE_ABOVE = 64


@dataclass
class Repair:
    guest_id: UUID
    what: list[str] = field(default_factory=list)


async def reconcile(loyalty: Loyalty, grace_s: float, batch_size: int = 500) -> list[Repair]:
    """Compare and repair every loaded wallet, holds and all; returns what was fixed."""
    repairs: list[Repair] = []
    after: UUID | None = None
    while True:
        page, after = await reconcile_page(loyalty, grace_s, after, batch_size, thorough=True)
        repairs += page
        if after is None:
            return repairs


async def reconcile_page(
    loyalty: Loyalty,
    grace_s: float,
    after: UUID | None,
    batch_size: int,
    *,
    thorough: bool = False,
) -> tuple[list[Repair], UUID | None]:
    """Compare and repair the wallets of up to ``batch_size`` guests after ``after`` (by id),
    and drop their day-old markers of resolved transfers; returns what was fixed and where
    the next page starts (None: this was the last).

    Compares each wallet's posted and pending sums with the ledger's, and reads in full only
    the wallets that differ; ``thorough`` reads every wallet in full, which also finds an
    orphan hold and a missing hold of the same points (sums equal, holds not)."""
    now_ms = int(time.time() * 1000)
    grace_ms = int(grace_s * 1000)
    async with loyalty.db.connection() as conn:
        rows = await conn.fetch(sql.GUEST_ACCOUNTS_PAGE, after, batch_size)
    guest_ids = [row["guest_id"] for row in rows]
    hot = await loyalty.hot.balances(guest_ids)
    repairs: list[Repair] = []
    for guest_id in list(hot) if thorough else await _differing(loyalty, hot):
        repair = await _check_one(loyalty, guest_id, now_ms, grace_ms)
        if repair is not None:
            repairs.append(repair)
    dropped = await loyalty.hot.prune(list(hot), MARKER_AGE_MS, PRUNE_ABOVE)
    if dropped:
        log.info("dropped %d markers of resolved transfers from Redis wallets", dropped)
    return repairs, guest_ids[-1] if len(guest_ids) == batch_size else None


async def _differing(loyalty: Loyalty, hot: dict[UUID, tuple[int, int]]) -> list[UUID]:
    """The guests whose Redis (posted, pending) differ from the ledger's. Only those are read
    in full, holds and all: a busy guest's wallet holds thousands of transfers, and the worker
    reading every wallet of its page each pass stalled checkouts at the morning rush (issue
    5). An orphan hold, a missing one and a wrong posted balance each show in the sums.

    ``hot`` was read before the ledger: a checkout reserves in Redis before it commits, so
    one in flight between the two reads shows as a difference (and gets the full check, which
    spares young holds), never as agreement."""
    async with loyalty.db.connection() as conn:
        rows = await conn.fetch(sql.GUEST_BALANCES, list(hot))
    ledger = {row["guest_id"]: (row["posted"], row["pending"]) for row in rows}
    return [guest_id for guest_id, sums in hot.items() if ledger.get(guest_id) != sums]


class RollingReconcile:
    """The worker's reconcile: one page of wallets per pass, from where the last pass stopped,
    wrapping around, so that every wallet is compared now and then at a bounded cost per
    pass. Without it, the orphan hold of a process that died between the Redis reserve and
    the commit stayed in Redis (and in the balance the guest and the counter see) until
    someone ran `regulars reconcile`."""

    def __init__(self, loyalty: Loyalty, grace_s: float, batch_size: int) -> None:
        self._loyalty = loyalty
        self._grace_s = grace_s
        self._batch_size = batch_size
        self._after: UUID | None = None

    async def step(self) -> int:
        """Reconcile the next page; returns how many wallets were repaired (each is logged)."""
        repairs, self._after = await reconcile_page(
            self._loyalty, self._grace_s, self._after, self._batch_size
        )
        for repair in repairs:
            log.warning(
                "wallet %s repaired from the ledger: %s", repair.guest_id, "; ".join(repair.what)
            )
        return len(repairs)


async def _check_one(loyalty: Loyalty, guest_id: UUID, now_ms: int, grace_ms: int) -> Repair | None:
    hot = await loyalty.hot.read(guest_id)
    if hot is None:
        return None  # not cached: it loads from PostgreSQL on next use
    state, holds = hot
    async with loyalty.db.connection() as conn:
        snapshot = await loyalty.ledger.snapshot(conn, guest_id)
    if snapshot is None:
        return None
    repair = Repair(guest_id)
    pg_holds = {str(hold_id): points for hold_id, points in snapshot.holds}
    young_pending = 0
    redis_open: set[str] = set()
    for hold_id, value in holds.items():
        points, kind, ms = value.split("|")
        if kind != "p":
            continue
        redis_open.add(hold_id)
        if hold_id not in pg_holds:
            if now_ms - int(ms) >= grace_ms:
                repair.what.append(f"voided orphan hold {hold_id} ({points} points)")
            else:
                young_pending += int(points)
    for hold_id in pg_holds.keys() - redis_open:
        repair.what.append(f"restored hold {hold_id} ({pg_holds[hold_id]} points)")
    if state.posted != snapshot.state.posted:
        repair.what.append(f"posted {state.posted} -> {snapshot.state.posted}")
    expected_pending = snapshot.state.pending + young_pending
    if state.pending != expected_pending and not repair.what:
        repair.what.append(f"pending {state.pending} -> {expected_pending}")
    if not repair.what:
        return None
    await loyalty.hot.load(guest_id, snapshot, force=True, grace_ms=grace_ms)
    return repair
