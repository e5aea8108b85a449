"""``regulars import receipts FILE``: past receipts from a file, through the same intake as a
till's batch (server/pos/batch.py), so a receipt already imported is skipped (``replayed``)
and re-running a file changes nothing. The file is read a line at a time
(server/pos/importing.py parses it); receipts are taken in transactions of
``pos_batch_chunk_lines``.

Receipts are imported as the location's integration (the oldest active one, or the one
named): idempotency is per integration, so the same integration must take every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

from server.infra.db import Database
from server.infra.problems import Problem
from server.pos.auth import Till
from server.pos.batch import BatchIntake, Item
from server.pos.importing import ImportedReceipt, RefusedLine, parse_import

__all__ = ["ImportReport", "ReceiptImport"]

INTEGRATION_OF_LOCATION = """
SELECT i.id, i.brand_id, i.location_id, l.timezone, b.currency
FROM pos_integrations i
JOIN locations l ON l.id = i.location_id
JOIN brands b ON b.id = i.brand_id
WHERE i.location_id = $1 AND i.disabled_at IS NULL AND ($2::uuid IS NULL OR i.id = $2)
ORDER BY i.created_at
LIMIT 1
"""


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def receipts_per_s(self) -> float:
        done = self.imported + self.skipped + len(self.refused)
        return done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"imported={self.imported} skipped={self.skipped} refused={len(self.refused)}"
            f" receipts_per_s={self.receipts_per_s:.1f}"
        )


class _Reading:
    """The file's lines, counting the bytes read (for a progress bar)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        with self.path.open(encoding="utf-8-sig", newline="") as file:
            for line in file:
                self.bytes_read += len(line.encode())
                yield line


class ReceiptImport:
    def __init__(self, db: Database, batch: BatchIntake) -> None:
        self.db = db
        self.batch = batch

    async def run(
        self,
        path: Path,
        *,
        location_id: UUID,
        integration_id: UUID | None = None,
        column_map: dict[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Import ``path`` at ``location_id``; ``progress(bytes read)`` after each chunk.
        Refuses 404 ``integration-not-found`` when the location has no such integration.
        Raises ImportFileError for a file that cannot be read at all."""
        row = await self.db.fetchrow(INTEGRATION_OF_LOCATION, location_id, integration_id)
        if row is None:
            raise Problem(
                404,
                "integration-not-found",
                f"location {location_id} has no such POS integration;"
                " create one with `regulars integration create`",
            )
        till = Till(row["id"], row["brand_id"], row["location_id"], key_id="import")
        reading = _Reading(path)
        parsed = parse_import(
            reading,
            location_id=location_id,
            timezone=row["timezone"],
            currency=row["currency"],
            column_map=column_map,
        )
        report = ImportReport()
        started = time.perf_counter()
        async for chunk in self.batch.take_chunks(till, _items(parsed)):
            for result in chunk:
                if result.status == "created":
                    report.imported += 1
                elif result.status == "replayed":
                    report.skipped += 1
                else:
                    detail = str((result.problem or {}).get("detail", "refused"))
                    report.refused.append((result.line, detail))
            if progress is not None:
                progress(reading.bytes_read)
        report.seconds = time.perf_counter() - started
        return report


def _items(parsed: Iterator[ImportedReceipt | RefusedLine]) -> Iterator[Item]:
    for entry in parsed:
        if isinstance(entry, RefusedLine):
            yield entry.line, Problem(422, "invalid-line", entry.detail)
        else:
            yield entry.line, entry.receipt
