"""`regulars reconcile`: make every Redis wallet agree with the PostgreSQL ledger.

A wallet is repaired when its posted balance or its holds differ from PostgreSQL. Holds Redis
has but PostgreSQL does not are orphans (a process died between the Redis reserve and the
commit); they are voided once older than the grace period, so checkouts in flight are spared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from uuid import UUID

from server.loyalty import sql
from server.loyalty.service import Loyalty

__all__ = ["Repair", "reconcile"]


@dataclass
class Repair:
    guest_id: UUID
    what: list[str] = field(default_factory=list)


async def reconcile(loyalty: Loyalty, grace_s: float, batch_size: int = 500) -> list[Repair]:
    """Compare and repair every loaded wallet; returns what was fixed."""
    repairs: list[Repair] = []
    after: UUID | None = None
    now_ms = int(time.time() * 1000)
    grace_ms = int(grace_s * 1000)
    while True:
        async with loyalty.db.connection() as conn:
            rows = await conn.fetch(sql.GUEST_ACCOUNTS_PAGE, after, batch_size)
        if not rows:
            return repairs
        after = rows[-1]["guest_id"]
        for row in rows:
            repair = await _check_one(loyalty, row["guest_id"], now_ms, grace_ms)
            if repair is not None:
                repairs.append(repair)


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
