"""Loyalty use cases, and the one place that keeps Redis in step with the PostgreSQL ledger.

The order of a spend (DESIGN §4): :meth:`Loyalty.admit` reserves in Redis (a fast refusal),
the caller's PostgreSQL transaction makes the guarded hold, and after commit
:meth:`Loyalty.settle_admission` either keeps the Redis hold (success) or voids it (refusal).
Every other change is committed in PostgreSQL first and mirrored with :meth:`Loyalty.mirror`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from server.infra import idempotency
from server.infra.audit import audit
from server.infra.cache import SingleFlightCache
from server.infra.db import Database
from server.infra.idempotency import Stored
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.infra.redis import RedisUnavailable
from server.loyalty import sql
from server.loyalty.hot import HotWallets
from server.loyalty.model import Lot, Program, Tier, remaining_lots, tier_for
from server.loyalty.repository import AccountState, Ledger
from shared import contract

__all__ = ["Admission", "Loyalty", "Programs", "add_months", "insufficient_points"]

log = logging.getLogger("regulars.loyalty")

PROGRAM = "SELECT rules FROM loyalty_programs WHERE brand_id = $1"
GUEST_OF_BRAND = "SELECT 1 FROM guests WHERE id = $1 AND brand_id = $2"


def add_months(moment: datetime, months: int) -> datetime:
    """The same day ``months`` later, clamped to the end of a shorter month."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    for day in (moment.day, 30, 29, 28):
        try:
            return moment.replace(year=year, month=month, day=day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


class Programs:
    """Loyalty programs by brand, cached for a short while (they change rarely)."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self._db = db
        self._cache = SingleFlightCache(self._load, ttl_s, "program")

    async def get(self, brand_id: UUID, conn: asyncpg.Connection | None = None) -> Program:
        """The brand's program. A caller that holds a connection passes it as ``conn``: a
        program that is not fresh is then read on it (see SingleFlightCache.get)."""
        if conn is None:
            return await self._cache.get(brand_id)
        program = self._cache.fresh(brand_id)
        if program is None:
            program = _program(await conn.fetchval(PROGRAM, brand_id))
            self._cache.put(brand_id, program)
        return program

    def forget(self, brand_id: UUID) -> None:
        self._cache.forget(brand_id)

    async def _load(self, brand_id: UUID) -> Program:
        async with self._db.connection() as conn:
            return _program(await conn.fetchval(PROGRAM, brand_id))


def _program(rules: Any) -> Program:
    return msgspec.convert(rules or {}, Program)


# Failures after which PostgreSQL may or may not have committed: its answer was lost.
_ANSWER_LOST = (
    TimeoutError,
    OSError,
    asyncio.CancelledError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # how asyncpg may report a session PostgreSQL ended
    asyncpg.PostgresConnectionError,
)

# Failures of a reload that say PostgreSQL could not be read just now (gone, busy, too slow),
# not that the code is wrong: the wallet is then dropped from Redis instead (_reload_or_drop).
_UNREADABLE = (
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresError,
    Problem,  # database-busy: no connection came free in time
)


@dataclass(frozen=True, slots=True)
class Admission:
    """What Redis said about a spend before PostgreSQL was asked.

    ``reserved`` means this request put the hold in Redis, so this request must void it if
    PostgreSQL refuses. ``status`` 'skipped' means Redis was not available; 'overruled' that
    Redis refused points the ledger has (see :meth:`Loyalty.admit_or_replay`).
    """

    status: Literal["ok", "exists", "insufficient", "skipped", "none", "miss", "overruled"]
    spendable: int | None = None

    @property
    def reserved(self) -> bool:
        return self.status == "ok"


class Loyalty:
    def __init__(self, db: Database, ledger: Ledger, hot: HotWallets, programs: Programs) -> None:
        self.db = db
        self.ledger = ledger
        self.hot = hot
        self.programs = programs
        # Guests whose wallets changed while Redis was down: dropped from Redis when it is back.
        self._dirty: set[UUID] = set()
        hot.gate.on_recover(self._forget_dirty)
        hot.gate.on_recover(self.preload_scripts)

    # -- keeping Redis in step -----------------------------------------------------------

    async def admit(self, guest_id: UUID, transfer_id: UUID, points: int) -> Admission:
        """Reserve in Redis (one call). On a miss PostgreSQL alone decides, and
        :meth:`settle_admission` loads the wallet afterwards: a spend never costs more than two
        Redis calls."""
        if points <= 0:
            return Admission("none")
        try:
            status, spendable = await self.hot.reserve(guest_id, transfer_id, points)
        except RedisUnavailable:
            self._dirty.add(guest_id)
            return Admission("skipped")
        if status in ("ok", "exists", "insufficient", "miss"):
            return Admission(status, spendable)
        return Admission("skipped")

    async def admit_or_replay(
        self,
        guest_id: UUID,
        transfer_id: UUID,
        points: int,
        request: tuple[str, str, bytes],
    ) -> tuple[Admission, Stored | None]:
        """:meth:`admit`, and when Redis refuses: the stored response if this Idempotency-Key
        already succeeded (a replay whose hold Redis no longer shows), else 422
        ``insufficient-points`` once the ledger agrees — without opening a transaction.

        When the ledger has the points after all, Redis holds more than PostgreSQL does: the
        orphan of a process that died between the Redis reserve and the commit, which the
        reconcile voids only once its page comes round after the grace period. Refusing on
        it locked the guest out of those points until then. Instead PostgreSQL decides, and the wallet is dropped from Redis
        afterwards, to be loaded afresh on next use: a reload would keep an orphan younger
        than the grace period (it might still be a checkout in flight).
        """
        admission = await self.admit(guest_id, transfer_id, points)
        if admission.status != "insufficient":
            return admission, None
        scope, key, digest = request
        async with self.db.connection() as conn:
            replay = await idempotency.lookup(conn, scope, key, digest)
            if replay is not None:
                return admission, replay
            spendable = await conn.fetchval(sql.SPENDABLE, guest_id)
        if spendable is not None and spendable >= points:
            return Admission("overruled"), None
        raise insufficient_points(points, admission.spendable if spendable is None else spendable)

    async def settle_admission(
        self,
        guest_id: UUID,
        transfer_id: UUID,
        admission: Admission,
        state: AccountState | None,
        failure: BaseException | None = None,
    ) -> None:
        """After the PostgreSQL transaction: keep, or undo, what :meth:`admit` reserved.

        ``state`` is the account after a committed hold (None when PostgreSQL refused or the
        request was a replay); ``failure`` what the request raised, if anything. When Redis and
        PostgreSQL disagree, the wallet is reloaded.

        A refusal or an error voids the Redis hold. A failure that lost PostgreSQL's answer (a
        client-side timeout, a lost connection, a cancelled task) leaves it unknown whether
        PostgreSQL committed, or may still commit: the wallet is dropped from Redis, and the
        next spend lets PostgreSQL decide and loads it afresh. Voiding would lose a committed
        hold (a checkout can time out on the client while PostgreSQL goes on to commit it);
        keeping it would refuse spends for one that never committed.
        """
        try:
            if admission.reserved and state is None and isinstance(failure, _ANSWER_LOST):
                await self.hot.forget({guest_id})
            elif admission.reserved and state is None:
                await self._reload_or_drop(guest_id, void_first=(transfer_id,))
            elif (
                admission.status == "miss"
                # Redis had this transfer already, yet this request committed its hold: a retry
                # (same Idempotency-Key) of a spend PostgreSQL refused, whose void Redis keeps.
                or (admission.status == "exists" and state is not None)
                or (
                    admission.reserved
                    and state is not None
                    and admission.spendable != state.spendable
                )
            ):
                await self._reload_or_drop(guest_id)
            elif admission.status in ("skipped", "overruled"):
                # Redis failed at admission, or was found wrong, and PostgreSQL has decided
                # since: what Redis holds for this guest may be wrong either way.
                await self._distrust(guest_id)
        except RedisUnavailable:
            self._dirty.add(guest_id)

    async def mirror(
        self,
        guest_id: UUID,
        op: Literal["post", "void", "credit"],
        transfer_id: UUID,
        state: AccountState,
        points: int = 0,
    ) -> None:
        """Apply a committed change to Redis; reload the wallet if Redis has no such hold."""
        try:
            if op == "post":
                status, _ = await self.hot.post(guest_id, transfer_id, state.version)
            elif op == "void":
                status, _ = await self.hot.void(guest_id, transfer_id, state.version)
            else:
                status, _ = await self.hot.credit(guest_id, transfer_id, points, state.version)
            if status == "miss" or status in ("voided", "posted"):
                await self._reload_or_drop(guest_id)
        except RedisUnavailable:
            self._dirty.add(guest_id)

    async def reload(self, guest_id: UUID, void_first: Sequence[UUID] = ()) -> None:
        """Load the wallet from PostgreSQL into Redis (unless Redis mirrors a newer version),
        voiding the holds in ``void_first`` in the same call."""
        async with self.db.connection() as conn:
            snapshot = await self.ledger.snapshot(conn, guest_id)
        if snapshot is not None:
            await self.hot.load(guest_id, snapshot, void_first=void_first)

    async def _reload_or_drop(self, guest_id: UUID, void_first: Sequence[UUID] = ()) -> None:
        """:meth:`reload`, or, when PostgreSQL cannot be read just now, drop the wallet from
        Redis: the next spend loads it. Otherwise a refused checkout whose connection
        PostgreSQL ended left its hold in Redis until reconcile, and a committed one
        answered 503 because the mirror after the commit could not read the ledger."""
        try:
            await self.reload(guest_id, void_first)
        except _UNREADABLE as exc:
            log.warning("wallet %s not reloaded (%r); dropped from Redis instead", guest_id, exc)
            await self._distrust(guest_id)

    async def preload_scripts(self) -> None:
        """Load the Lua scripts into Redis if it is there (start-up, and after an outage)."""
        with contextlib.suppress(RedisUnavailable):
            await self.hot.preload()

    async def _distrust(self, guest_id: UUID) -> None:
        """Drop a wallet a failed Redis call may have left wrong: now if Redis answers again,
        else when it recovers. Waiting for the recovery alone lost wallets under overload: a
        call that timed out after another request had already seen Redis recover was marked
        for a recovery that never came, and Redis went on without a hold PostgreSQL had."""
        self._dirty.add(guest_id)
        if not self.hot.gate.degraded:
            await self._forget_dirty()

    async def _forget_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        try:
            await self.hot.forget(dirty)
        except RedisUnavailable:
            self._dirty |= dirty

    # -- reading -------------------------------------------------------------------------

    async def tier(
        self, conn: asyncpg.Connection, program: Program, account_id: UUID
    ) -> tuple[Tier, Tier | None, int]:
        since = datetime.now(UTC) - timedelta(days=program.tier_window_days)
        earned = int(await conn.fetchval(sql.POINTS_EARNED_SINCE, account_id, since))
        current, following = tier_for(program, earned)
        return current, following, earned

    async def wallet(self, guest_id: UUID, brand_id: UUID) -> contract.Wallet:
        """Spendable and held points (from Redis when it has them), tier and expiring lots."""
        program = await self.programs.get(brand_id)
        async with self.db.connection() as conn:
            account = await conn.fetchrow(sql.GUEST_ACCOUNT, guest_id)
            if account is None:
                raise Problem(404, "guest-not-found", "no such guest")
            current, following, earned = await self.tier(conn, program, account["id"])
            lots = [
                Lot(r["amount"], r["expires_at"])
                for r in await conn.fetch(sql.GUEST_LOTS, account["id"])
            ]
            consumed = int(await conn.fetchval(sql.CONSUMED, account["id"]))
        posted, pending = account["posted"], account["pending"]
        try:
            hot = await self.hot.read(guest_id)
            if hot is not None:
                posted, pending = hot[0].posted, hot[0].pending
        except RedisUnavailable:
            pass
        expiring = [
            contract.ExpiringPoints(points=lot.points, expires_at=lot.expires_at)
            for lot in remaining_lots(lots, consumed)[:3]
        ]
        return contract.Wallet(
            points_available=posted - pending,
            points_pending=pending,
            tier=current.name,
            next_tier=following.name if following else None,
            points_to_next_tier=(following.min_points - earned) if following else None,
            point_value_minor=program.point_value_minor,
            expiring=expiring,
        )

    async def ledger_page(
        self, guest_id: UUID, cursor: str | None, limit: int
    ) -> contract.LedgerPage:
        after_at, after_id = _parse_cursor(cursor)
        async with self.db.connection() as conn:
            account_id = await conn.fetchval(
                "SELECT id FROM accounts WHERE guest_id = $1", guest_id
            )
            rows = await conn.fetch(sql.LEDGER_PAGE, account_id, after_at, after_id, limit + 1)
        entries = []
        for row in rows[:limit]:
            state: Literal["pending", "posted", "voided"] = "posted"
            if row["phase"] == "pending":
                state = {"post_pending": "posted", "void_pending": "voided"}.get(
                    row["resolution"] or "", "pending"
                )  # type: ignore[assignment]
            sign = 1 if row["is_credit"] else -1
            entries.append(
                contract.LedgerEntry(
                    id=row["id"],
                    code=row["code"],
                    points=sign * row["amount"],
                    state=state,
                    created_at=row["created_at"],
                    order_id=row["order_id"],
                    reason=row["reason"],
                )
            )
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            # Microseconds since the epoch: a cursor that needs no URL escaping.
            micros = (last["created_at"] - _EPOCH) // timedelta(microseconds=1)
            next_cursor = f"{micros}_{last['id']}"
        return contract.LedgerPage(entries=entries, next_cursor=next_cursor)

    # -- writing -------------------------------------------------------------------------

    async def adjust(
        self, conn: asyncpg.Connection, *, brand_id: UUID, guest_id: UUID, points: int, reason: str
    ) -> tuple[UUID, AccountState]:
        """A manager's correction: positive points are a credit, negative a guarded debit."""
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE guest_id = $1", guest_id)
        if account_id is None or points == 0:
            raise Problem(
                422, "invalid-adjustment", "points must be non-zero for an existing guest"
            )
        program = await self.programs.get(brand_id, conn)
        transfer_id = uuid.uuid4()
        state: AccountState | None
        if points > 0:
            state = await self.ledger.credit(
                conn,
                transfer_id=transfer_id,
                brand_id=brand_id,
                account_id=account_id,
                points=points,
                code="adjustment",
                source="adjustments",
                reason=reason,
                expires_at=add_months(datetime.now(UTC), program.lot_expiry_months),
            )
        else:
            state = await self.ledger.debit(
                conn,
                transfer_id=transfer_id,
                brand_id=brand_id,
                account_id=account_id,
                points=-points,
                code="adjustment",
                sink="adjustments",
                guarded=True,
                reason=reason,
            )
            if state is None:
                raise Problem(
                    422,
                    "insufficient-points",
                    f"the guest does not have {-points} spendable points to take away",
                )
        return transfer_id, state

    async def manager_adjustment(
        self, manager: Principal, guest_id: UUID, body: contract.AdjustmentIn, key: str
    ) -> Stored:
        """Adjust a guest of the manager's brand, once per key, with an audit entry."""
        scope = f"staff:{manager.subject_id}:adjustments"
        digest = idempotency.request_hash(f"POST /v1/guests/{guest_id}/adjustments", body)
        async with self.db.transaction() as conn:
            replay = await idempotency.begin(conn, scope, key, digest)
            if replay is not None:
                return replay
            if await conn.fetchval(GUEST_OF_BRAND, guest_id, manager.brand_id) is None:
                raise Problem(404, "guest-not-found", f"no guest {guest_id}")
            transfer_id, state = await self.adjust(
                conn,
                brand_id=manager.brand_id,
                guest_id=guest_id,
                points=body.points,
                reason=body.reason,
            )
            await audit(
                conn,
                manager,
                "points.adjust",
                guest_id,
                {"points": body.points, "reason": body.reason},
            )
            transfer = contract.Transfer(
                id=transfer_id,
                guest_id=guest_id,
                code="adjustment",
                points=body.points,
                state="posted",
                created_at=datetime.now(UTC),
                points_available=state.spendable,
            )
            stored = Stored(201, msgspec.json.encode(transfer))
            await idempotency.finish(conn, scope, key, 201, stored.body)
        await self.mirror(guest_id, "credit", transfer_id, state, body.points)
        return stored


def insufficient_points(wanted: int, spendable: int | None) -> Problem:
    """The refusal of a spend the balance does not cover (checkout and counter alike)."""
    return Problem(
        422,
        "insufficient-points",
        f"the guest has {spendable if spendable is not None else 'fewer'} spendable points, "
        f"{wanted} were asked",
        points_available=spendable,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_cursor(cursor: str | None) -> tuple[datetime | None, UUID | None]:
    if not cursor:
        return None, None
    try:
        micros, _, ident = cursor.partition("_")
        return _EPOCH + timedelta(microseconds=int(micros)), UUID(ident)
    except (ValueError, OverflowError):
        raise Problem(422, "invalid-cursor", "the cursor is not one this API handed out") from None
