"""``POST /v1/pos/receipts:batch``: NDJSON receipts, streamed, one answer per line.

The body is never held whole: each chunk goes through the signature's MAC and is split into
lines as it arrives, and each line is taken in its own savepoint of one transaction, so a bad
line is refused with its problem and the rest proceeds. The signature can only be judged once
the last byte is in, so the transaction commits only then: a batch whose signature does not
match is rolled back whole and answered 401, as if it had never come. Bounded: at most
``pos_batch_max_lines`` lines of at most ``pos_batch_line_max_bytes`` each, and
``pos_batch_timeout_s`` for the whole batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec

from server.infra.db import Database
from server.infra.problems import Problem
from server.pos.auth import Till, TillAuth
from server.pos.points import Move, PointsPort
from server.pos.receipts import Intake
from server.settings import Settings
from shared.pos import BatchLineResult, ReceiptIn

__all__ = ["BatchIntake"]

_decode = msgspec.json.Decoder(ReceiptIn).decode


def _refused(line: int, problem: Problem) -> BatchLineResult:
    return BatchLineResult(line=line, status="refused", problem=problem.body())


class BatchIntake:
    def __init__(
        self, settings: Settings, db: Database, auth: TillAuth, intake: Intake, points: PointsPort
    ) -> None:
        self.settings = settings
        self.db = db
        self.auth = auth
        self.intake = intake
        self.points = points

    async def take(self, headers: Any, body: AsyncIterator[bytes]) -> list[BatchLineResult]:
        """Verify the key and timestamp, take every line, then check the signature over the
        whole body before committing. Refuses the whole batch with 401 (signature), 413
        ``batch-too-long``, or 408 ``batch-too-slow``."""
        pending = await self.auth.open(headers)
        # Remembered before the body is read: two copies of one batch never run side by side.
        await self.auth.remember(pending)
        moves: list[Move] = []
        try:
            async with asyncio.timeout(self.settings.pos_batch_timeout_s):
                async with self.db.transaction() as conn:
                    results = await self._lines(conn, pending.till, pending.mac, body, moves)
                    await self.auth.close(pending)
        except TimeoutError:
            raise Problem(408, "batch-too-slow", "the batch did not arrive in time") from None
        await self.points.mirror(moves)
        return results

    async def _lines(
        self,
        conn: asyncpg.Connection,
        till: Till,
        mac: Any,
        body: AsyncIterator[bytes],
        moves: list[Move],
    ) -> list[BatchLineResult]:
        max_lines = self.settings.pos_batch_max_lines
        max_bytes = self.settings.pos_batch_line_max_bytes
        results: list[BatchLineResult] = []
        buffer = bytearray()
        number = 0
        overlong = False  # skipping the rest of a line that was too long

        async def finish_line(raw: bytes) -> None:
            nonlocal number
            number += 1
            if number > max_lines:
                raise Problem(413, "batch-too-long", f"a batch has at most {max_lines} lines")
            if raw.strip():
                results.append(await self._line(conn, till, number, raw, moves))

        async for chunk in body:
            mac.update(chunk)
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                if overlong:
                    overlong = False
                    await self._too_long(number := number + 1, results, max_lines)
                else:
                    buffer += chunk[start:end]
                    await finish_line(bytes(buffer))
                buffer.clear()
                start = end + 1
            if not overlong:
                buffer += chunk[start:]
                if len(buffer) > max_bytes:
                    overlong, buffer = True, bytearray()
        if overlong:
            await self._too_long(number + 1, results, max_lines)
        elif buffer.strip():
            await finish_line(bytes(buffer))
        return results

    async def _too_long(self, number: int, results: list[BatchLineResult], max_lines: int) -> None:
        if number > max_lines:
            raise Problem(413, "batch-too-long", f"a batch has at most {max_lines} lines")
        limit = self.settings.pos_batch_line_max_bytes
        results.append(
            _refused(number, Problem(413, "line-too-long", f"a line has at most {limit} bytes"))
        )

    async def _line(
        self, conn: asyncpg.Connection, till: Till, number: int, raw: bytes, moves: list[Move]
    ) -> BatchLineResult:
        try:
            receipt = _decode(raw)
        except msgspec.ValidationError as exc:
            return _refused(number, Problem(422, "validation-error", str(exc)))
        except msgspec.DecodeError as exc:
            return _refused(number, Problem(400, "malformed-json", f"not a JSON object: {exc}"))
        try:
            async with conn.transaction():  # a savepoint: a refusal undoes this line only
                taken = await self.intake.take_on(conn, till, receipt)
        except Problem as problem:
            return _refused(number, problem)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            return _refused(
                number, Problem(422, "invalid-receipt", f"the receipt cannot be stored: {exc}")
            )
        moves.extend(taken.moves)
        return BatchLineResult(line=number, status=taken.status, receipt_id=taken.receipt_id)
