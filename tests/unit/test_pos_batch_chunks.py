"""The batch's chunks in flight (server/pos/batch.py, ``BatchIntake.take_chunks``): a chunk's
turn (``after``) comes only once the chunk before it committed, results come in file order,
and a chunk that fails stops the batch: the chunk after it never takes its turn and rolls
back. Fakes stand in for the pool and the intake (a unit test: no database here)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from server.pos.auth import Till
from server.pos.batch import BatchIntake, Item
from server.pos.receipts import Taken
from server.settings import Settings
from shared.pos import ReceiptIn

TILL = Till(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), key_id="k")
NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


Log = list[str]  # what happened, in order: "read …", "earn …", "commit txN", "rollback txN"


class FakeConn:
    def __init__(self, name: str) -> None:
        self.name = name

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield  # a savepoint: nothing to log


class FakeDb:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.opened = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeConn]:
        self.opened += 1
        name = f"tx{self.opened}"
        try:
            yield FakeConn(name)
        except BaseException:
            self.log.append(f"rollback {name}")
            raise
        for _ in range(5):  # COMMIT: a round trip and a flush
            await asyncio.sleep(0)
        self.log.append(f"commit {name}")


class FakeIntake:
    """Takes every receipt as created; the receipts whose id starts with ``fail`` make their
    chunk fail as a lost connection would, once the chunk after it waits for its turn."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.second_waits = asyncio.Event()

    async def take_many(
        self,
        conn: FakeConn,
        till: Till,
        receipts: Sequence[ReceiptIn],
        after: asyncio.Event | None = None,
    ) -> list[Taken | None]:
        first = receipts[0].external_id
        self.log.append(f"read {first}")
        for _ in range(5):  # the chunk's reads, round trips to the database
            await asyncio.sleep(0)
        if conn.name == "tx2":
            self.second_waits.set()
        assert after is not None
        await after.wait()
        if first.startswith("fail"):
            await self.second_waits.wait()
            raise ConnectionError("the connection was lost")
        self.log.append(f"earn {first}")
        await asyncio.sleep(0)
        return [Taken("created", uuid.uuid4(), b"{}") for _ in receipts]


class FakePoints:
    async def mirror(self, moves: Any) -> None:
        return None


def batch(log: Log) -> BatchIntake:
    settings = Settings(pos_batch_chunk_lines=2, pos_batch_analyze_lines=0)
    # The fakes have only what take_chunks uses (no TillAuth at all: the batch is verified).
    intake = FakeIntake(log)  # the receipt intake and the chunks' both
    return BatchIntake(settings, FakeDb(log), None, intake, intake, FakePoints())  # type: ignore[arg-type]


def items(*ids: str) -> list[Item]:
    return [
        (n, ReceiptIn(external_id=i, location_id=TILL.location_id, occurred_at=NOW, lines=[]))
        for n, i in enumerate(ids, 1)
    ]


async def test_a_chunk_takes_its_turn_only_after_the_chunk_before_committed() -> None:
    log: Log = []
    taker = batch(log)
    results = [r async for r in taker.take_chunks(TILL, iter(items("a1", "a2", "b1", "b2", "c1")))]

    assert [[r.line for r in chunk] for chunk in results] == [[1, 2], [3, 4], [5]]
    assert all(r.status == "created" for chunk in results for r in chunk)
    # Each chunk's earning comes after the commit of the chunk before it.
    assert log.index("earn b1") > log.index("commit tx1")
    assert log.index("earn c1") > log.index("commit tx2")
    # And the next chunk was read while the one before it was in flight.
    assert log.index("read b1") < log.index("commit tx1")


async def test_a_failing_chunk_stops_the_batch_and_the_next_one_never_takes_its_turn() -> None:
    log: Log = []
    taker = batch(log)

    with pytest.raises(ConnectionError):
        async for _ in taker.take_chunks(TILL, iter(items("fail1", "x", "b1", "b2"))):
            pass

    assert "read b1" in log  # the second chunk was in flight
    assert "earn b1" not in log
    assert log.count("rollback tx1") == log.count("rollback tx2") == 1
    assert not [entry for entry in log if entry.startswith("commit")]
