"""Loyalty: the only way points move (DESIGN §6), and the one place that keeps Redis in step
with the PostgreSQL ledger (DESIGN §4).

For the other domains (checkout, counter, tills), all on the caller's connection and inside
its transaction unless said otherwise:

- spend: ``async with loyalty.spend(guest, transfer_id, points, request) as spend`` admits in
  Redis, ``spend.hold(conn, ...)`` makes the guarded hold, ``spend.committed(state)`` after
  the commit; leaving the block settles Redis (keeps, voids or reloads; settle_action).
- resolve a hold: ``hold_of``, then ``post`` / ``void`` (or ``resolve``), typed outcomes.
- earn: ``earn`` (a lot with the program's expiry), ``reverse_earning`` for refunds,
  ``adjust`` for a manager's correction.
- after the commit: ``mirror_all`` the returned movements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec

from server.infra import idempotency
from server.infra.audit import audit
from server.infra.db import Database
from server.infra.idempotency import IdempotentRequest, Stored
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.infra.redis import RedisGate, RedisUnavailable
from server.loyalty import sql
from server.loyalty.hot import HotWallets
from server.loyalty.model import (
    AccountState,
    Earning,
    Movement,
    Outcome,
    PlannedEarn,
    Program,
    add_months,
    earn_in_order,
    earn_points,
    settle_action,
    states_after,
    tier_for,
)
from server.loyalty.programs import Programs
from server.loyalty.repository import Credit, Hold, Ledger
from server.loyalty.spend import Admission, Resolution, Spend, insufficient_points
from server.loyalty.wallets import WalletReads
from shared import contract

__all__ = [
    "Admission",
    "EarnCode",
    "Earning",
    "Loyalty",
    "Programs",
    "Resolution",
    "Spend",
    "add_months",
    "build_loyalty",
    "insufficient_points",
]

log = logging.getLogger("regulars.loyalty")

ADJUSTMENTS_ROUTE = "POST /v1/guests/{guest_id}/adjustments"


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


EarnCode = Literal["earn", "accrual", "welcome", "spend_returned", "refund_restore", "adjustment"]
_SOURCE: dict[str, Literal["issued", "redeemed", "adjustments"]] = {
    "earn": "issued",
    "accrual": "issued",
    "welcome": "issued",
    "spend_returned": "redeemed",
    "refund_restore": "redeemed",
    "adjustment": "adjustments",
}


def build_loyalty(
    db: Database,
    gate: RedisGate,
    grace_s: float,
    programs_ttl_s: float,
    mirror_guests_at_once: int,
) -> Loyalty:
    """The loyalty service with its ledger, hot wallets and program cache (for lifespan.py)."""
    return Loyalty(
        db, Ledger(), HotWallets(gate, grace_s), Programs(db, programs_ttl_s), mirror_guests_at_once
    )


class Loyalty(WalletReads):
    """Every points movement, and Redis kept in step with the ledger (module docstring)."""

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        hot: HotWallets,
        programs: Programs,
        mirror_guests_at_once: int = 16,
    ) -> None:
        self.db = db
        # How many guests' wallets mirror_all mirrors side by side (each may reload its wallet).
        self.mirror_guests_at_once = mirror_guests_at_once
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
        request: IdempotentRequest | None,
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
        async with self.db.connection() as conn:
            if request is not None:
                replay = await idempotency.lookup(conn, request.scope, request.key, request.digest)
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
        action = settle_action(
            admission.status,
            committed=state is not None,
            redis_agrees=state is not None and admission.spendable == state.spendable,
            answer_lost=isinstance(failure, _ANSWER_LOST),
        )
        try:
            if action == "forget":
                await self.hot.forget({guest_id})
            elif action == "void_and_reload":
                await self._reload_or_drop(guest_id, void_first=(transfer_id,))
            elif action == "reload":
                await self._reload_or_drop(guest_id)
            elif action == "distrust":
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

    async def mirror_all(self, movements: Iterable[Movement | None]) -> None:
        """:meth:`mirror` each committed movement (None ones are skipped), each guest's in
        order. Different guests' wallets are mirrored side by side: their calls share the
        pipelined line's round trips (a batch's chunk moves many guests' points at once)."""
        by_guest: dict[UUID, list[Movement]] = {}
        for moved in movements:
            if moved is not None:
                by_guest.setdefault(moved.guest_id, []).append(moved)
        chains = list(by_guest.values())
        step = max(1, self.mirror_guests_at_once)
        for start in range(0, len(chains), step):
            await asyncio.gather(*(self._mirror_in_order(c) for c in chains[start : start + step]))

    async def _mirror_in_order(self, movements: Sequence[Movement]) -> None:
        for moved in movements:
            await self.mirror(
                moved.guest_id, moved.op, moved.transfer_id, moved.state, moved.points
            )

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

    # -- moving points: the API every other domain uses ---------------------------------

    @contextlib.asynccontextmanager
    async def spend(
        self,
        guest_id: UUID,
        transfer_id: UUID,
        points: int,
        request: IdempotentRequest | None = None,
    ) -> AsyncIterator[Spend]:
        """Spend ``points`` of a guest as the pending transfer ``transfer_id``: Redis admits
        first, the caller's PostgreSQL transaction makes the guarded hold
        (:meth:`Spend.hold`, or its own statement calling ``loyalty_hold``), and on leaving the
        block both sides are settled (:meth:`settle_admission`).

        Refuses 422 ``insufficient-points`` before any transaction when Redis and the ledger
        agree the points are not there; when the Idempotency-Key already succeeded, the block
        gets ``spend.replay`` to answer with (only with ``request``: a caller with its own
        idempotency, such as a till's receipt id, passes None). The caller reports the commit with
        :meth:`Spend.committed` *after* its transaction committed; until then, leaving the block
        (normally or by an exception) counts as a refusal and voids the Redis reserve, except
        after a failure that lost PostgreSQL's answer (the wallet is dropped from Redis).
        ``transfer_id`` should derive from the Idempotency-Key, so that a retry reserves the
        same hold. Exceptions of the block propagate unchanged.
        """
        admission, replay = await self.admit_or_replay(guest_id, transfer_id, points, request)
        spend = Spend(self.ledger, guest_id, transfer_id, points, admission, replay)
        failure: BaseException | None = None
        try:
            yield spend
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await self.settle_admission(guest_id, transfer_id, admission, spend.state, failure)
        if spend.posted and spend.state is not None:
            await self.mirror(guest_id, "post", transfer_id, spend.state)

    async def redeemed_account(self, conn: asyncpg.Connection, brand_id: UUID) -> UUID:
        """The brand's ``redeemed`` system account: where a spend's hold goes (for a caller
        whose own statement calls ``loyalty_hold``)."""
        return await self.ledger.system_account(conn, brand_id, "redeemed")

    async def open_account(self, conn: asyncpg.Connection, brand_id: UUID, guest_id: UUID) -> UUID:
        """The guest's points account, opened if it is not there yet (idempotent)."""
        return await self.ledger.open_account(conn, brand_id, guest_id)

    async def account_of(self, conn: asyncpg.Connection, guest_id: UUID) -> UUID | None:
        """The guest's points account, or None when the guest has none."""
        account_id: UUID | None = await conn.fetchval(sql.ACCOUNT_OF_GUEST, guest_id)
        return account_id

    async def spendable(self, conn: asyncpg.Connection, guest_id: UUID) -> int | None:
        """Posted minus held points as PostgreSQL has them (None: no such account)."""
        points: int | None = await conn.fetchval(sql.SPENDABLE, guest_id)
        return points

    async def earn(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        guest_id: UUID,
        account_id: UUID,
        points: int,
        code: EarnCode,
        order_id: UUID | None = None,
        location_id: UUID | None = None,
        reason: str | None = None,
        now: datetime | None = None,
        transfer_id: UUID | None = None,
    ) -> Movement:
        """Credit ``points`` (> 0) to the guest as a lot that expires after the brand's
        ``lot_expiry_months``, in the caller's transaction. The points come from the system
        account that ``code`` says (``issued`` for what is earned, ``redeemed`` for spent
        points given back, ``adjustments`` for a manager's correction). Mirror the returned
        movement after the commit (:meth:`mirror_all`). ``transfer_id`` names the transfer when
        the caller has recorded it already (a till receipt)."""
        if points <= 0:
            raise ValueError("earn credits a positive number of points")
        program = await self.programs.get(brand_id, conn)
        transfer_id = transfer_id or uuid.uuid4()
        state = await self.ledger.credit(
            conn,
            transfer_id=transfer_id,
            brand_id=brand_id,
            account_id=account_id,
            points=points,
            code=code,
            source=_SOURCE[code],
            order_id=order_id,
            location_id=location_id,
            reason=reason,
            expires_at=add_months(now or datetime.now(UTC), program.lot_expiry_months),
        )
        return Movement(guest_id, "credit", transfer_id, state, points)

    async def plan_earn(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        program: Program,
        earned_in_window: int,
        paid_minor: int,
        now: datetime | None = None,
    ) -> PlannedEarn | None:
        """What :meth:`earn` with code ``earn`` would credit for ``paid_minor`` of net money
        at the tier that ``earned_in_window`` (``loyalty_tier_window``, migration 0022) gives,
        for a caller's statement to write through ``loyalty_earn``; None for 0 points (nothing
        to write). Mirror :meth:`planned_movement` after that statement committed."""
        tier, _ = tier_for(program, earned_in_window)
        points = earn_points(program, paid_minor, tier)
        if points <= 0:
            return None
        source = await self.ledger.system_account(conn, brand_id, _SOURCE["earn"])
        expires_at = add_months(now or datetime.now(UTC), program.lot_expiry_months)
        return PlannedEarn(uuid.uuid4(), source, points, "earn", expires_at)

    @staticmethod
    def planned_movement(guest_id: UUID, plan: PlannedEarn, state: AccountState) -> Movement:
        """The movement a written :class:`PlannedEarn` made (``state``: the account after)."""
        return Movement(guest_id, "credit", plan.transfer_id, state, plan.points)

    async def earn_many(
        self, conn: asyncpg.Connection, *, brand_id: UUID, earnings: Sequence[Earning]
    ) -> list[Movement | None]:
        """What :meth:`earn` at each guest's tier would credit for each of ``earnings``, one
        after another in order (a guest's tier counts what their earlier ones earned), set-based:
        the accounts locked in one statement (in id order), their tier windows read in one,
        every transfer written in one and the accounts credited in one. None for an earning of
        0 points (nothing written). Mirror the movements after the commit; each is the state
        after its own transfer, as :meth:`earn` one at a time would have left it."""
        program = await self.programs.get(brand_id, conn)
        guests = sorted({e.guest_id for e in earnings})
        rows = await conn.fetch(sql.LOCK_GUEST_ACCOUNTS, guests)
        account_of: dict[UUID, UUID] = {row["guest_id"]: row["id"] for row in rows}
        assert len(account_of) == len(guests), "every guest has an account"
        windows = await self.earned_in_windows(conn, program, list(account_of.values()))
        paid = [(account_of[e.guest_id], e.paid_minor) for e in earnings]
        points = earn_in_order(program, paid, windows)
        planned = [
            Credit(uuid.uuid4(), account_id, n, e.location_id, e.reason) if n > 0 else None
            for (account_id, _), n, e in zip(paid, points, earnings, strict=True)
        ]
        credits = [c for c in planned if c is not None]
        if not credits:
            return [None] * len(earnings)
        finals = await self.ledger.credit_many(
            conn, brand_id=brand_id, source="issued", code="earn", credits=credits,
            expires_at=add_months(datetime.now(UTC), program.lot_expiry_months),
        )  # fmt: skip
        by_account: dict[UUID, list[Credit]] = {}
        for c in credits:
            by_account.setdefault(c.account_id, []).append(c)
        state_of: dict[UUID, AccountState] = {}
        for account_id, mine in by_account.items():
            after = states_after(finals[account_id], [c.points for c in mine])
            state_of.update((c.transfer_id, state) for c, state in zip(mine, after, strict=True))
        return [
            None
            if c is None
            else Movement(e.guest_id, "credit", c.transfer_id, state_of[c.transfer_id], c.points)
            for c, e in zip(planned, earnings, strict=True)
        ]

    async def reverse_earning(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        guest_id: UUID,
        account_id: UUID,
        points: int,
        order_id: UUID | None = None,
        location_id: UUID | None = None,
        reason: str | None = None,
    ) -> Movement:
        """Take back ``points`` a refunded order (or till receipt) earned. Never refused: the balance may go
        below zero (DESIGN §3), and the guest cannot spend until it is positive again."""
        transfer_id = uuid.uuid4()
        state = await self.ledger.debit(
            conn,
            transfer_id=transfer_id,
            brand_id=brand_id,
            account_id=account_id,
            points=points,
            code="refund_reversal",
            sink="issued",
            guarded=False,
            order_id=order_id,
            location_id=location_id,
            reason=reason,
        )
        assert state is not None  # an unguarded debit always applies
        return Movement(guest_id, "credit", transfer_id, state, -points)

    async def hold_of(self, conn: asyncpg.Connection, transfer_id: UUID) -> Hold | None:
        """A pending transfer (a hold) and how it was resolved, if it was; None if there is
        no pending transfer ``transfer_id``."""
        return await self.ledger.pending(conn, transfer_id)

    async def resolve(
        self, conn: asyncpg.Connection, hold: Hold, *, post: bool, now: datetime | None = None
    ) -> Resolution:
        """Post (``post``) or void a hold exactly once, in the caller's transaction.

        With ``now``, a hold whose timeout has passed is voided instead of posted and the
        outcome is ``expired``. A hold resolved before is left as it is (``already_posted`` /
        ``already_voided``). Mirror ``resolution.movement`` after the commit."""
        expired = post and now is not None and hold.timeout_at is not None and hold.timeout_at < now
        resolved = await self.ledger.resolve(conn, hold, post=post and not expired)
        outcome: Outcome = "expired" if expired and resolved.state is not None else resolved.outcome
        movement = None
        if resolved.state is not None:
            op: Literal["post", "void"] = "post" if resolved.outcome == "posted" else "void"
            movement = Movement(hold.guest_id, op, hold.id, resolved.state)
        return Resolution(outcome, hold, movement)

    async def post(
        self, conn: asyncpg.Connection, hold: Hold, *, now: datetime | None = None
    ) -> Resolution:
        """:meth:`resolve` to post: ``posted``, or ``expired`` (with ``now``, past its timeout:
        voided instead), or ``already_posted`` / ``already_voided``."""
        return await self.resolve(conn, hold, post=True, now=now)

    async def void(self, conn: asyncpg.Connection, hold: Hold) -> Resolution:
        """:meth:`resolve` to void: ``voided``, or ``already_posted`` / ``already_voided``."""
        return await self.resolve(conn, hold, post=False)

    # -- writing -------------------------------------------------------------------------

    async def adjust(
        self, conn: asyncpg.Connection, *, brand_id: UUID, guest_id: UUID, points: int, reason: str
    ) -> Movement:
        """A manager's correction in the caller's transaction: positive points are a credit
        (a lot that expires like any other), negative a guarded debit. Refuses 422
        ``invalid-adjustment`` for 0 points or a guest with no account, 422
        ``insufficient-points`` for a debit beyond what is spendable."""
        account_id = await self.account_of(conn, guest_id)
        if account_id is None or points == 0:
            raise Problem(
                422, "invalid-adjustment", "points must be non-zero for an existing guest"
            )
        if points > 0:
            return await self.earn(
                conn, brand_id=brand_id, guest_id=guest_id, account_id=account_id,
                points=points, code="adjustment", reason=reason,
            )  # fmt: skip
        transfer_id = uuid.uuid4()
        state = await self.ledger.debit(
            conn, transfer_id=transfer_id, brand_id=brand_id, account_id=account_id,
            points=-points, code="adjustment", sink="adjustments", guarded=True, reason=reason,
        )  # fmt: skip
        if state is None:
            raise Problem(
                422,
                "insufficient-points",
                f"the guest does not have {-points} spendable points to take away",
            )
        return Movement(guest_id, "credit", transfer_id, state, points)

    async def manager_adjustment(
        self, manager: Principal, guest_id: UUID, body: contract.AdjustmentIn, key: str
    ) -> Stored:
        """Adjust a guest of the manager's brand, once per key, with an audit entry. Refuses
        404 ``guest-not-found`` for a guest of another brand, and what :meth:`adjust` refuses."""
        request = IdempotentRequest.of(
            f"staff:{manager.subject_id}:adjustments",
            key,
            ADJUSTMENTS_ROUTE.format(guest_id=guest_id),
            body,
        )
        async with self.db.transaction() as conn:
            replay = await idempotency.begin_request(conn, request)
            if replay is not None:
                return replay
            if await conn.fetchval(sql.GUEST_OF_BRAND, guest_id, manager.brand_id) is None:
                raise Problem(404, "guest-not-found", f"no guest {guest_id}")
            moved = await self.adjust(
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
                id=moved.transfer_id,
                guest_id=guest_id,
                code="adjustment",
                points=body.points,
                state="posted",
                created_at=datetime.now(UTC),
                points_available=moved.state.spendable,
            )
            stored = Stored(201, msgspec.json.encode(transfer))
            await idempotency.finish_request(conn, request, stored)
        await self.mirror_all([moved])
        return stored
