"""The spend protocol's values: what Redis said (Admission), one spend in progress (Spend),
and what resolving a hold met (Resolution). ``Loyalty.spend`` drives them (service.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from server.infra.idempotency import Stored
from server.infra.problems import Problem
from server.loyalty import sql
from server.loyalty.model import AccountState, AdmissionStatus, Movement, Outcome
from server.loyalty.repository import Hold, Ledger

__all__ = ["Admission", "Resolution", "Spend", "insufficient_points"]


@dataclass(frozen=True, slots=True)
class Admission:
    """What Redis said about a spend before PostgreSQL was asked.

    ``reserved`` means this request put the hold in Redis, so this request must void it if
    PostgreSQL refuses. ``status`` 'skipped' means Redis was not available; 'overruled' that
    Redis refused points the ledger has (see ``Loyalty.admit_or_replay``).
    """

    status: AdmissionStatus
    spendable: int | None = None

    @property
    def reserved(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, slots=True)
class Resolution:
    """What ``Loyalty.resolve`` met, the hold it met it on, and the movement to mirror
    after the commit (None when nothing changed)."""

    outcome: Outcome
    hold: Hold
    movement: Movement | None


class Spend:
    """One spend in progress (``Loyalty.spend``)."""

    def __init__(
        self,
        ledger: Ledger,
        guest_id: UUID,
        transfer_id: UUID,
        points: int,
        admission: Admission,
        replay: Stored | None,
    ) -> None:
        self._ledger = ledger
        self.guest_id = guest_id
        self.transfer_id = transfer_id
        self.points = points
        self.admission = admission
        # The stored response of an Idempotency-Key that already succeeded: answer with it.
        self.replay = replay
        # The account after the committed hold (set by committed()); None: not committed.
        self.state: AccountState | None = None
        self.posted = False

    async def hold(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        account_id: UUID,
        code: str,
        timeout_at: datetime | None,
        order_id: UUID | None = None,
        location_id: UUID | None = None,
    ) -> AccountState:
        """The guarded hold in the caller's transaction (SQL function ``loyalty_hold``):
        returns the account after it. Refuses 422 ``insufficient-points`` (also while the
        balance is negative) and writes nothing then."""
        held = await self._ledger.hold(
            conn,
            transfer_id=self.transfer_id,
            brand_id=brand_id,
            account_id=account_id,
            points=self.points,
            code=code,
            timeout_at=timeout_at,
            order_id=order_id,
            location_id=location_id,
        )
        if held is None:
            spendable = await conn.fetchval(sql.SPENDABLE, self.guest_id)
            raise insufficient_points(self.points, spendable)
        return held

    def committed(self, state: AccountState | None, *, posted: bool = False) -> None:
        """Say that the transaction holding the points committed, with the account ``state``
        after it (None: nothing was held, e.g. a replay). ``posted``: the same transaction
        also posted the hold; Redis is told after the settle."""
        self.state = state
        self.posted = posted


def insufficient_points(wanted: int, spendable: int | None) -> Problem:
    """The refusal of a spend the balance does not cover (checkout and counter alike)."""
    return Problem(
        422,
        "insufficient-points",
        f"the guest has {spendable if spendable is not None else 'fewer'} spendable points, "
        f"{wanted} were asked",
        points_available=spendable,
    )
