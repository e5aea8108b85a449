"""``POST /v1/pos/receipts:batch``: NDJSON receipts, streamed, one answer per line.

The body is never held whole in memory: as it streams in, each chunk goes through the
signature's MAC and into a spool (memory up to ``pos_batch_spool_memory_bytes``, a temporary
file beyond). Only once the last byte is in and the signature matches is any line taken, so a
forged or tampered batch costs no database work and stores nothing. The spool is then read a
line at a time and taken in transactions of ``pos_batch_chunk_lines`` lines (two chunks in
flight at once: see ``take_chunks``), each line in its own savepoint: a bad line is refused
with its problem and the rest proceeds, and no transaction holds guests' rows for longer than
one chunk (realtime receipts of the same guests wait at most that long). Bounded:
``pos_batch_max_lines`` lines of at most ``pos_batch_line_max_bytes`` each and
``pos_batch_max_bytes`` in all, ``pos_batch_timeout_s`` for the whole batch. Chunks taken before a failure (the database going away mid-batch) stay
taken: sent again, their lines answer ``replayed``.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, Any

import asyncpg
import msgspec

from server.infra.db import Database
from server.infra.problems import Problem
from server.pos import sql
from server.pos.auth import PendingCheck, Till, TillAuth
from server.pos.chunks import ChunkIntake
from server.pos.points import Move, PointsPort
from server.pos.receipts import Intake, Taken
from server.settings import Settings
from shared.pos import BatchLineResult, ReceiptIn

__all__ = ["BatchIntake", "Item"]

_decode = msgspec.json.Decoder(ReceiptIn).decode
# A receipt to take, by its line number in the batch or file, or why that line is refused.
Item = tuple[int, ReceiptIn | Problem]
# A chunk's answers by line, and the points it moved (to mirror to Redis).
_Chunk = tuple[dict[int, BatchLineResult], list[Move]]
# Lines read (and parsed) between two turns of the chunks in flight.
_READ_SLICE = 50


def _refused(line: int, problem: Problem) -> BatchLineResult:
    return BatchLineResult(line=line, status="refused", problem=problem.body())


class BatchIntake:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        auth: TillAuth,
        intake: Intake,
        chunks: ChunkIntake,
        points: PointsPort,
    ) -> None:
        self.settings = settings
        self.db = db
        self.auth = auth
        self.intake = intake
        self.chunks = chunks
        self.points = points

    async def take(self, headers: Any, body: AsyncIterator[bytes]) -> list[BatchLineResult]:
        """Receive and verify the whole batch, then take it line by line.

        Refuses the whole batch with 401 (signature), 413 ``batch-too-long`` or 408
        ``batch-too-slow``, before any line is taken.
        """
        pending = await self.auth.open(headers)
        # Remembered before the body is read: two copies of one batch never run side by side.
        await self.auth.remember(pending)
        limit = self.settings.pos_batch_max_bytes
        with tempfile.SpooledTemporaryFile(self.settings.pos_batch_spool_memory_bytes) as spool:
            try:
                async with asyncio.timeout(self.settings.pos_batch_timeout_s):
                    await self._receive(pending, body, spool, limit)
            except TimeoutError:
                raise Problem(408, "batch-too-slow", "the batch did not arrive in time") from None
            till = await self.auth.close(pending)
            spool.seek(0)
            return await self._take_lines(till, self._lines(spool))

    async def _receive(
        self, pending: PendingCheck, body: AsyncIterator[bytes], spool: IO[bytes], limit: int
    ) -> None:
        size = newlines = 0
        last = b"\n"
        max_lines = self.settings.pos_batch_max_lines
        too_long = Problem(
            413,
            "batch-too-long",
            f"a batch has at most {max_lines} lines and {self.settings.pos_batch_max_bytes} bytes",
        )
        async for chunk in body:
            if not chunk:
                continue
            pending.mac.update(chunk)
            size += len(chunk)
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
            if newlines > max_lines or size > limit:
                raise too_long
            spool.write(chunk)
        if newlines + (last != b"\n") > max_lines:
            raise too_long

    def _lines(self, spool: IO[bytes]) -> Iterator[Item]:
        """The spool's receipts, numbered by line from 1 (blank lines skipped); a line over
        the size limit or not a receipt as its problem."""
        max_bytes = self.settings.pos_batch_line_max_bytes
        number = 0
        while raw := spool.readline(max_bytes + 1):
            number += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while (rest := spool.readline(max_bytes + 1)) and not rest.endswith(b"\n"):
                    pass
                yield number, Problem(413, "line-too-long", f"a line has at most {max_bytes} bytes")
            elif raw.strip():
                yield number, _receipt_of(raw)

    async def _take_lines(self, till: Till, items: Iterator[Item]) -> list[BatchLineResult]:
        results: list[BatchLineResult] = []
        async for chunk in self.take_chunks(till, items):
            results += chunk
        return results

    async def take_chunks(
        self, till: Till, items: Iterator[Item]
    ) -> AsyncIterator[list[BatchLineResult]]:
        """Take ``items`` in transactions of ``pos_batch_chunk_lines`` receipts; yields each
        chunk's results once it committed (the import's progress).

        A chunk's replays and sales are taken together (:meth:`ChunkIntake.take_many`,
        in a savepoint); every other receipt, or all of them when the database refuses that,
        in a savepoint of its own: a refusal undoes that receipt only.

        Two chunks are in flight at once, on two connections, so that one chunk's Python runs
        while PostgreSQL works on the other: a chunk is read, parsed and priced, claims its
        keys and writes its anonymous sales while the chunk before it is still being written,
        and earns, folds visits and writes its guests' sales only once that one committed
        (:meth:`ChunkIntake.take_many`'s ``after``). Points and visits therefore follow file order:
        the results are those of taking the chunks one after another. A chunk that names an
        ``external_id`` of a chunk in flight waits for it to commit before it starts. The one
        wait left the other way, a claim code of the chunk before meeting one of this chunk's
        uncommitted codes, is one in 10^14 codes. A chunk's points are mirrored to Redis after
        it committed, in order, while the next chunks go on."""
        size = self.settings.pos_batch_chunk_lines
        lines_taken, analyze_at = 0, self.settings.pos_batch_analyze_lines
        mirroring: asyncio.Task[None] | None = None
        committed = asyncio.Event()
        committed.set()  # nothing comes before the first chunk
        in_flight: collections.deque[tuple[list[Item], asyncio.Task[_Chunk]]] = collections.deque()
        try:
            waiting = await _next_chunk(items, size)
            while waiting or in_flight:
                if waiting and len(in_flight) < 2 and not _shares_ids(in_flight, waiting):
                    after, committed = committed, asyncio.Event()
                    task = asyncio.create_task(self._take_chunk(till, waiting, after, committed))
                    in_flight.append((waiting, task))
                    waiting = await _next_chunk(items, size)  # the chunks in flight go on
                    continue
                chunk, task = in_flight[0]
                answers, moves = await task
                in_flight.popleft()
                if mirroring is not None:
                    await mirroring
                mirroring = asyncio.create_task(self.points.mirror(moves))
                lines_taken += len(chunk)
                if 0 < analyze_at <= lines_taken:
                    await self._refresh_statistics(lines_taken)
                    analyze_at *= 2
                yield [
                    _refused(number, item) if isinstance(item, Problem) else answers[number]
                    for number, item in chunk
                ]
        finally:
            for _, task in in_flight:  # a chunk failed, or the caller stopped reading
                task.cancel()
            await asyncio.gather(*(task for _, task in in_flight), return_exceptions=True)
            if mirroring is not None:
                await mirroring

    async def _take_chunk(
        self, till: Till, chunk: list[Item], after: asyncio.Event, committed: asyncio.Event
    ) -> _Chunk:
        """One chunk in one transaction, writing once ``after`` is set (the chunk before it
        committed); sets ``committed`` once it committed. Its answers by line, and the moves
        to mirror."""
        receipts = [(n, r) for n, r in chunk if not isinstance(r, Problem)]
        moves: list[Move] = []
        answers: dict[int, BatchLineResult] = {}
        async with self.db.transaction() as conn:
            together = await self._take_together(conn, till, [r for _, r in receipts], after)
            await after.wait()
            for (number, receipt), taken in zip(receipts, together, strict=True):
                if taken is None:
                    answers[number] = await self._take(conn, till, number, receipt, moves)
                else:
                    moves.extend(taken.moves)
                    answers[number] = BatchLineResult(
                        line=number, status=taken.status, receipt_id=taken.receipt_id
                    )
        committed.set()
        return answers, moves

    async def _refresh_statistics(self, lines_taken: int) -> None:
        """ANALYZE the keys this batch has been adding to (pos_batch_analyze_lines), unless
        the planner already counts more keys than the batch took: a large table's statistics
        hardly move with one batch, and analyzing it reads thousands of pages."""
        async with self.db.connection() as conn:
            if int(await conn.fetchval(sql.KEYS_ESTIMATE)) < lines_taken:
                await conn.execute(sql.ANALYZE_KEYS)

    async def _take_together(
        self, conn: asyncpg.Connection, till: Till, receipts: list[ReceiptIn], after: asyncio.Event
    ) -> list[Taken | None]:
        try:
            async with conn.transaction():  # a savepoint: a refusal leaves nothing of it
                return await self.chunks.take_many(conn, till, receipts, after)
        except (
            Problem,
            asyncpg.DataError,
            asyncpg.IntegrityConstraintViolationError,
            asyncpg.TransactionRollbackError,
        ):
            return [None] * len(receipts)

    async def _take(
        self,
        conn: asyncpg.Connection,
        till: Till,
        number: int,
        receipt: ReceiptIn,
        moves: list[Move],
    ) -> BatchLineResult:
        try:
            async with conn.transaction():  # a savepoint: a refusal undoes this receipt only
                taken = await self.intake.take_on(conn, till, receipt)
        except Problem as refusal:
            return _refused(number, refusal)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            detail = f"the receipt cannot be stored: {exc}"
            return _refused(number, Problem(422, "invalid-receipt", detail))
        except asyncpg.TransactionRollbackError:
            # A deadlock with another writer of the same guest: this line only; send it again.
            detail = "the receipt met a concurrent change; send it again"
            return _refused(number, Problem(409, "receipt-busy", detail))
        moves.extend(taken.moves)
        return BatchLineResult(line=number, status=taken.status, receipt_id=taken.receipt_id)


def _shares_ids(in_flight: Iterable[tuple[list[Item], object]], chunk: list[Item]) -> bool:
    """Whether ``chunk`` names an ``external_id`` a chunk in flight names too: it then waits
    for that one to commit before it starts, as its key would wait on that one's claim while
    that one's own fallback could wait on its claim."""
    ids = {r.external_id for _, r in chunk if not isinstance(r, Problem)}
    return any(
        not isinstance(r, Problem) and r.external_id in ids
        for other, _ in in_flight
        for _, r in other
    )


async def _next_chunk(items: Iterator[Item], size: int) -> list[Item]:
    """Up to ``size`` more items (none when ``items`` is exhausted). Reading a line parses
    it: every ``_READ_SLICE`` lines, the chunks in flight get their turn."""
    chunk: list[Item] = []
    while piece := list(itertools.islice(items, min(_READ_SLICE, size - len(chunk)))):
        chunk += piece
        await asyncio.sleep(0)
    return chunk


def _receipt_of(raw: bytes) -> ReceiptIn | Problem:
    try:
        return _decode(raw)
    except msgspec.ValidationError as exc:
        return Problem(422, "validation-error", str(exc))
    except msgspec.DecodeError as exc:
        return Problem(400, "malformed-json", f"not a JSON object: {exc}")
