"""The loyalty program's pure rules: earning, tiers, the points cap and lot expiry. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

import msgspec

__all__ = [
    "AccountState",
    "AccrualLimits",
    "AdmissionStatus",
    "Lot",
    "Movement",
    "Outcome",
    "PlannedEarn",
    "Program",
    "SettleAction",
    "Tier",
    "accrual_over_limit",
    "add_months",
    "allocate",
    "earn_points",
    "points_cap",
    "remaining_lots",
    "settle_action",
    "tier_for",
    "tier_window_start",
]


class Tier(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    # Points earned in the rolling window needed to reach the tier.
    min_points: int = msgspec.field(default=0)
    # Earn multiplier in percent (150 = 1.5×), so the rules stay in integers.
    multiplier_pct: int = 100


class AccrualLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one role may credit at the counter on its own; None is no limit. Above any of
    them the accrual needs someone of a higher role (issue 21, finding 2)."""

    # The largest single accrual, in points.
    max_points: int | None = None
    # Accruals by one staff member in the last hour, and for one guest in the last 24 hours.
    per_staff_per_hour: int | None = None
    per_guest_per_day: int | None = None


def _default_accrual_limits() -> dict[str, AccrualLimits]:
    # A barista's 500 points are a 100.00 receipt at 5 points per 1.00; managers and admins
    # approve, so they have none.
    return {
        "barista": AccrualLimits(max_points=500, per_staff_per_hour=60, per_guest_per_day=5),
        "shift_lead": AccrualLimits(max_points=2_000, per_staff_per_hour=120, per_guest_per_day=10),
    }


class Program(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A brand's loyalty rules, stored as jsonb in ``loyalty_programs.rules``."""

    point_value_minor: int = 1
    # Points earned per 100 minor units of net money paid (5 = 5 points per 1.00).
    earn_per_100_minor: int = 5
    tiers: list[Tier] = msgspec.field(default_factory=lambda: [Tier(name="Member")])
    tier_window_days: int = 365
    max_points_share_pct: int = 30
    lot_expiry_months: int = 12
    welcome_bonus_points: int = 0
    # Per staff role; a role not named here accrues without limit.
    accrual_limits: dict[str, AccrualLimits] = msgspec.field(
        default_factory=_default_accrual_limits
    )

    def __post_init__(self) -> None:
        if self.point_value_minor < 1:
            raise ValueError("point_value_minor must be at least 1")
        if not 0 <= self.max_points_share_pct <= 100:
            raise ValueError("max_points_share_pct must be within 0..100")
        if self.earn_per_100_minor < 0 or self.welcome_bonus_points < 0:
            raise ValueError("earning rules must not be negative")
        if not self.tiers or self.tiers[0].min_points != 0:
            raise ValueError("the first tier must start at 0 points")
        if any(
            a.min_points >= b.min_points for a, b in zip(self.tiers, self.tiers[1:], strict=False)
        ):
            raise ValueError("tiers must be ordered by min_points, strictly increasing")


def accrual_over_limit(
    limits: AccrualLimits | None, points: int, by_staff_last_hour: int, for_guest_last_day: int
) -> str | None:
    """Which of the role's limits this accrual would pass (the name of the setting), or None.
    The counts are the accruals before this one."""
    if limits is None:
        return None
    if limits.max_points is not None and points > limits.max_points:
        return "max_points"
    if limits.per_staff_per_hour is not None and by_staff_last_hour >= limits.per_staff_per_hour:
        return "per_staff_per_hour"
    if limits.per_guest_per_day is not None and for_guest_last_day >= limits.per_guest_per_day:
        return "per_guest_per_day"
    return None


def tier_for(program: Program, points_earned_in_window: int) -> tuple[Tier, Tier | None]:
    """The tier a guest holds and the next one (None at the top)."""
    current, following = program.tiers[0], None
    for tier in program.tiers:
        if points_earned_in_window >= tier.min_points:
            current = tier
        elif following is None:
            following = tier
    return current, following


def earn_points(program: Program, net_paid_minor: int, tier: Tier) -> int:
    """Points earned on money really paid (never on points, discounts or excluded lines)."""
    if net_paid_minor <= 0:
        return 0
    return net_paid_minor * program.earn_per_100_minor * tier.multiplier_pct // 10_000


def points_cap(program: Program, payable_minor: int) -> int:
    """The most points an order of ``payable_minor`` (after discounts) may take: the brand's
    ``max_points_share_pct`` of it, in whole points. The balance is checked where it lives
    (Redis admits, PostgreSQL's guarded update decides)."""
    return max(0, payable_minor * program.max_points_share_pct // 100 // program.point_value_minor)


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` over ``weights`` proportionally, exactly (largest remainder).

    Used for a discount or the points of an order over its lines, so that refunding every line
    gives back exactly the whole, never a unit more or less.
    """
    weight_sum = sum(weights)
    if total == 0 or weight_sum == 0:
        return [0] * len(weights)
    shares = [total * w // weight_sum for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % weight_sum), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True, slots=True)
class Lot:
    points: int
    expires_at: datetime


def remaining_lots(credits: Iterable[Lot], consumed: int) -> list[Lot]:
    """What is left of each credit lot after ``consumed`` points were taken oldest first.

    No lot rows are updated when points are spent: FIFO consumption means the oldest lots are
    used first, so what remains follows from the credits and the total consumed.
    """
    left: list[Lot] = []
    for lot in sorted(credits, key=lambda lot: lot.expires_at):
        take = min(consumed, lot.points)
        consumed -= take
        if lot.points > take:
            left.append(Lot(lot.points - take, lot.expires_at))
    return left


@dataclass(frozen=True, slots=True)
class AccountState:
    """A guest account after a change: what Redis must mirror."""

    posted: int
    pending: int
    version: int

    @property
    def spendable(self) -> int:
        return self.posted - self.pending


# What Redis said about a spend before PostgreSQL was asked (see Loyalty.admit):
# ok: this request reserved; exists: Redis had this transfer already; insufficient: refused;
# miss: the wallet is not loaded; none: nothing to spend; skipped: Redis did not answer;
# overruled: Redis refused points the ledger has.
AdmissionStatus = Literal["ok", "exists", "insufficient", "skipped", "none", "miss", "overruled"]

# What to do to Redis once PostgreSQL has decided a spend:
# keep: Redis is right; forget: drop the wallet (PostgreSQL's answer was lost, it may or may not
# have committed); void_and_reload: undo this request's reserve and reload; reload: load the
# wallet afresh; distrust: drop the wallet now, or when Redis is back.
SettleAction = Literal["keep", "forget", "void_and_reload", "reload", "distrust"]


def settle_action(
    status: AdmissionStatus, *, committed: bool, redis_agrees: bool, answer_lost: bool
) -> SettleAction:
    """How Redis follows a spend PostgreSQL has decided.

    ``committed``: the hold committed in PostgreSQL (False for a refusal, an error or a replay);
    ``redis_agrees``: Redis's spendable after the reserve equals PostgreSQL's after the hold
    (only read when this request reserved and committed); ``answer_lost``: the request failed in
    a way that leaves it unknown whether PostgreSQL committed (a client-side timeout, a lost
    connection, a cancelled task).

    A refusal or an error voids this request's reserve. A lost answer drops the wallet instead:
    voiding would lose a hold PostgreSQL goes on to commit; keeping it would refuse spends for a
    hold that never committed.
    """
    reserved = status == "ok"
    if reserved and not committed:
        return "forget" if answer_lost else "void_and_reload"
    if (
        status == "miss"
        # Redis had this transfer already, yet this request committed its hold: a retry (same
        # Idempotency-Key) of a spend PostgreSQL refused, whose void Redis keeps.
        or (status == "exists" and committed)
        or (reserved and not redis_agrees)
    ):
        return "reload"
    if status in ("skipped", "overruled"):
        # Redis failed at admission, or was found wrong, and PostgreSQL has decided since: what
        # Redis holds for this guest may be wrong either way.
        return "distrust"
    return "keep"


@dataclass(frozen=True, slots=True)
class Movement:
    """A committed change of one guest's points, which Redis mirrors after the commit
    (``Loyalty.mirror_all``). ``points`` is signed for a credit (negative: a debit)."""

    guest_id: UUID
    op: Literal["post", "void", "credit"]
    transfer_id: UUID
    state: AccountState
    points: int = 0


# What resolving a pending transfer met: this call posted or voided it; it had passed its
# timeout and this call voided it instead of posting (only when the caller asked for expiry);
# or another call had resolved it already.
Outcome = Literal["posted", "voided", "expired", "already_posted", "already_voided"]


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


@dataclass(frozen=True, slots=True)
class Earning:
    """One guest's earning of a set taken together (:meth:`Loyalty.earn_many`): what was
    paid (net money that earns) where, and why."""

    guest_id: UUID
    paid_minor: int
    location_id: UUID | None
    reason: str


def earn_in_order(
    program: Program, paid: Sequence[tuple[UUID, int]], earned_in_window: dict[UUID, int]
) -> list[int]:
    """The points of each (account, net paid) in order, as one earn after another would give
    them: each at the tier its account holds with what the earlier ones earned counted."""
    running = dict(earned_in_window)
    points: list[int] = []
    for account_id, paid_minor in paid:
        tier, _ = tier_for(program, running[account_id])
        earned = earn_points(program, paid_minor, tier)
        running[account_id] += max(earned, 0)
        points.append(earned)
    return points


def states_after(final: AccountState, points: Sequence[int]) -> list[AccountState]:
    """The account after each of its credits ``points`` in order, given the state after all of
    them, each credit one version (what one credit after another would have left)."""
    states: list[AccountState] = []
    posted, version = final.posted, final.version
    for credit in reversed(points):
        states.append(AccountState(posted=posted, pending=final.pending, version=version))
        posted, version = posted - credit, version - 1
    return states[::-1]


def tier_window_start(program: Program, now: datetime) -> datetime:
    """Where the tier window that counts at ``now`` starts."""
    return now - timedelta(days=program.tier_window_days)


@dataclass(frozen=True, slots=True)
class PlannedEarn:
    """An earn computed ahead of its write (:meth:`Loyalty.plan_earn`), for a statement that
    writes it through the ``loyalty_earn`` SQL function (migration 0022) with these
    arguments: what :meth:`Loyalty.earn` would write."""

    transfer_id: UUID
    source_account_id: UUID
    points: int
    code: str
    expires_at: datetime
