"""Loyalty.spend, the one spend protocol (admit in Redis, hold in PostgreSQL, settle both), with
fakes for Redis's hot wallets and the ledger: what Redis is told after each way a spend ends."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from uuid import UUID

import pytest

from server.infra.idempotency import IdempotentRequest
from server.loyalty.model import AccountState
from server.loyalty.repository import Snapshot
from server.loyalty.service import Loyalty

GUEST, TRANSFER = uuid.uuid4(), uuid.uuid4()
REQUEST = IdempotentRequest("guest:g:orders", "key-1", b"digest")


class FakeGate:
    degraded = False

    def on_recover(self, callback: Callable[[], Any]) -> None:
        pass


class FakeHot:
    """Redis's hot wallets: a reserve that answers ``ok``, and a record of what followed."""

    def __init__(self, spendable_after_reserve: int = 60) -> None:
        self.gate = FakeGate()
        self.spendable = spendable_after_reserve
        self.calls: list[tuple[str, Any]] = []

    async def reserve(self, guest_id: UUID, transfer_id: UUID, points: int) -> tuple[str, int]:
        self.calls.append(("reserve", points))
        return "ok", self.spendable

    async def post(self, guest_id: UUID, transfer_id: UUID, version: int) -> tuple[str, int]:
        self.calls.append(("post", version))
        return "ok", self.spendable

    async def load(
        self, guest_id: UUID, snapshot: Snapshot, *, void_first: Sequence[UUID] = ()
    ) -> tuple[str, int]:
        self.calls.append(("load", tuple(void_first)))
        return "ok", snapshot.state.spendable

    async def forget(self, guest_ids: set[UUID]) -> None:
        self.calls.append(("forget", frozenset(guest_ids)))


class FakeLedger:
    async def snapshot(self, conn: Any, guest_id: UUID) -> Snapshot:
        return Snapshot(uuid.uuid4(), AccountState(100, 0, 1), holds=[])


class FakeDb:
    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        yield None


def loyalty(hot: FakeHot) -> Loyalty:
    return Loyalty(FakeDb(), FakeLedger(), hot, programs=None)  # type: ignore[arg-type]


async def test_a_committed_hold_redis_agrees_with_is_left_as_it_is() -> None:
    hot = FakeHot(spendable_after_reserve=60)
    async with loyalty(hot).spend(GUEST, TRANSFER, 40, REQUEST) as spend:
        assert spend.replay is None
        spend.committed(AccountState(posted=100, pending=40, version=2))
    assert hot.calls == [("reserve", 40)]


async def test_a_hold_posted_in_the_same_transaction_is_posted_in_redis_after_the_settle() -> None:
    hot = FakeHot(spendable_after_reserve=60)
    async with loyalty(hot).spend(GUEST, TRANSFER, 40, REQUEST) as spend:
        spend.committed(AccountState(posted=60, pending=0, version=3), posted=True)
    assert hot.calls == [("reserve", 40), ("post", 3)]


async def test_a_disagreement_reloads_the_wallet() -> None:
    hot = FakeHot(spendable_after_reserve=70)
    async with loyalty(hot).spend(GUEST, TRANSFER, 40, REQUEST) as spend:
        spend.committed(AccountState(posted=100, pending=40, version=2))
    assert hot.calls == [("reserve", 40), ("load", ())]


async def test_a_refusal_voids_this_requests_reserve_and_propagates() -> None:
    hot = FakeHot()
    with pytest.raises(RuntimeError, match="refused"):
        async with loyalty(hot).spend(GUEST, TRANSFER, 40, REQUEST):
            raise RuntimeError("refused")
    assert hot.calls == [("reserve", 40), ("load", (TRANSFER,))]


async def test_leaving_without_a_commit_counts_as_a_refusal() -> None:
    hot = FakeHot()
    async with loyalty(hot).spend(GUEST, TRANSFER, 40, REQUEST):
        pass  # e.g. the key was used before: the block answered with the stored response
    assert hot.calls == [("reserve", 40), ("load", (TRANSFER,))]


async def test_a_lost_answer_drops_the_wallet_instead_of_voiding() -> None:
    hot = FakeHot()
    with pytest.raises(TimeoutError):
        async with loyalty(hot).spend(GUEST, TRANSFER, 40, REQUEST):
            raise TimeoutError("PostgreSQL may still commit")
    assert hot.calls == [("reserve", 40), ("forget", frozenset({GUEST}))]


async def test_nothing_to_spend_touches_no_redis() -> None:
    hot = FakeHot()
    async with loyalty(hot).spend(GUEST, TRANSFER, 0, REQUEST) as spend:
        spend.committed(None)
    assert hot.calls == []
