"""The kiosk's persistent outbox of accruals (DESIGN §3: client-minted idempotency keys).

Promise: an accrual the barista confirms is on disk, with its ``Idempotency-Key`` already
minted, before any byte goes to the server. Replays reuse that key, so a request whose answer
was lost (timeout, crash, power cut) is sent again and the server returns the original
transfer instead of crediting twice. Entries are delivered in creation order, one drain at a
time; a refusal that will never succeed (4xx other than 401/429) is kept as *rejected* with
the server's reason rather than retried for ever.

An accrual over the barista's role limits (403 ``accrual-needs-approval``) is neither lost nor
retried: it *needs approval* until a shift lead or manager makes it with their own sign-in
(:meth:`OutboxRelay.send_approved`) or the barista cancels it. The approver's request carries
a second key, minted and committed before it is sent and kept until the entry is settled, so
a crash or a lost answer mid-approval is re-sent under the same key and credits once.

Storage is a SQLite file in the kiosk's data directory (WAL, ``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol, cast
from uuid import UUID

import msgspec

from kiosk.api import ApiProblem, Offline
from kiosk.ids import uuid7
from shared import contract

__all__ = [
    "APPROVAL_SLUG",
    "ApprovalNeed",
    "ApprovalOutcome",
    "DrainReport",
    "Outbox",
    "OutboxApi",
    "OutboxCounts",
    "OutboxEntry",
    "OutboxRelay",
]

EntryState = Literal["pending", "needs_approval", "delivered", "rejected"]
# The server's refusal of an accrual above the staff member's role limits.
APPROVAL_SLUG = "accrual-needs-approval"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key         TEXT PRIMARY KEY,          -- the Idempotency-Key, a UUIDv7: sorts by time
    kind        TEXT NOT NULL,             -- 'accrual'
    guest_id    TEXT,                      -- NULL while only a scanned code is known
    code        TEXT,                      -- the code scanned offline, resolved on replay
    body        TEXT NOT NULL,             -- AccrualIn as JSON
    scanned_at  TEXT,
    created_at  TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    response    TEXT,                      -- the server's Transfer once delivered
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, key);
"""

# Columns added after the first kiosks shipped: added in place to an older file on open.
_ADDED_COLUMNS = {
    "approval": "TEXT",  # ApprovalNeed as JSON while (or since) it needed approval
    "approval_key": "TEXT",  # the Idempotency-Key of the approver's request, minted once
    "approved_by": "TEXT",  # the approver's email once their request was delivered
}

_COLUMNS = (
    "key, kind, guest_id, code, body, scanned_at, created_at, state, attempts, last_error,"
    " response, approval, approval_key, approved_by"
)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ApprovalNeed(msgspec.Struct, frozen=True, kw_only=True):
    """Why an accrual waits for a higher role: the server's ``accrual-needs-approval`` body."""

    points: int | None = None
    # Which limit it passes: ``max_points``, ``per_staff_per_hour`` or ``per_guest_per_day``.
    limit: str = ""
    # The roles whose own limits allow it, lowest first (e.g. shift_lead, manager).
    approver_roles: list[str] = msgspec.field(default_factory=list)
    detail: str = ""

    @classmethod
    def of(cls, problem: ApiProblem) -> ApprovalNeed:
        """Read the problem's extension members, tolerating any that are missing or odd."""
        body = problem.body
        points = body.get("points")
        roles = body.get("approver_roles")
        return cls(
            points=points if isinstance(points, int) and not isinstance(points, bool) else None,
            limit=str(body.get("limit") or ""),
            approver_roles=[str(r) for r in roles] if isinstance(roles, list) else [],
            detail=problem.detail,
        )


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    key: str
    kind: str
    guest_id: str | None
    code: str | None
    accrual: contract.AccrualIn
    scanned_at: datetime | None
    created_at: datetime
    state: EntryState
    attempts: int
    last_error: str | None
    transfer: contract.Transfer | None
    approval: ApprovalNeed | None = None
    approval_key: str | None = None
    approved_by: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    pending: int = 0
    delivered: int = 0
    rejected: int = 0
    needs_approval: int = 0


class Outbox:
    """The SQLite-backed list of accruals waiting for (or done with) the server.

    Thread-safe: one connection guarded by a lock, so the UI thread may read counts while the
    network loop writes.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed entry survives a power cut, which is the point of the outbox.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(outbox)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                self._conn.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")

    def close(self) -> None:
        """Close the file; later calls fail."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def add_accrual(
        self,
        accrual: contract.AccrualIn,
        guest_id: UUID | str | None = None,
        code: str | None = None,
    ) -> OutboxEntry:
        """Persist an accrual with a freshly minted key; returns only after the commit.

        Refuses an entry that names neither a guest nor a scanned code.
        """
        if guest_id is None and not code:
            raise ValueError("an accrual needs a guest id or a scanned code")
        key = str(uuid7())
        now = _now()
        scanned_at = accrual.scanned_at.isoformat() if accrual.scanned_at else None
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO outbox (key, kind, guest_id, code, body, scanned_at, created_at,"
                " updated_at) VALUES (?, 'accrual', ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    str(guest_id) if guest_id else None,
                    code,
                    msgspec.json.encode(accrual).decode(),
                    scanned_at,
                    now,
                    now,
                ),
            )
        entry = self.get(key)
        assert entry is not None
        return entry

    def get(self, key: str) -> OutboxEntry | None:
        """The entry with this key, in any state."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE key = ?", (key,)
            ).fetchone()
        return _entry(row) if row else None

    def entries(self, state: EntryState | None = None, limit: int = 500) -> list[OutboxEntry]:
        """Entries oldest first, optionally only those in ``state``."""
        with self._lock:
            if state is None:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM outbox ORDER BY key LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM outbox WHERE state = ? ORDER BY key LIMIT ?",
                    (state, limit),
                ).fetchall()
        return [_entry(r) for r in rows]

    def counts(self) -> OutboxCounts:
        """How many entries are in each state."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, count(*) FROM outbox GROUP BY state"
            ).fetchall()
        by_state = dict(rows)
        return OutboxCounts(
            pending=by_state.get("pending", 0),
            delivered=by_state.get("delivered", 0),
            rejected=by_state.get("rejected", 0),
            needs_approval=by_state.get("needs_approval", 0),
        )

    def resolve_guest(self, key: str, guest_id: UUID | str) -> None:
        """Remember which guest a scanned code belonged to, so a retry skips the lookup."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET guest_id = ?, updated_at = ?"
                " WHERE key = ? AND state = 'pending'",
                (str(guest_id), _now(), key),
            )

    def mark_delivered(
        self, key: str, transfer: contract.Transfer, approved_by: str | None = None
    ) -> None:
        """Record the server's transfer (and who approved it); the entry is never sent again."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'delivered', response = ?, last_error = NULL,"
                " approved_by = ?, attempts = attempts + 1, updated_at = ?"
                " WHERE key = ? AND state IN ('pending', 'needs_approval')",
                (msgspec.json.encode(transfer).decode(), approved_by, _now(), key),
            )

    def mark_rejected(self, key: str, reason: str) -> None:
        """Give up on an entry the server refused for good, keeping the reason."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'rejected', last_error = ?, attempts = attempts + 1,"
                " updated_at = ? WHERE key = ? AND state IN ('pending', 'needs_approval')",
                (reason, _now(), key),
            )

    def note_failure(self, key: str, reason: str) -> None:
        """Count a failed attempt that will be retried (or approved again)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, updated_at = ?"
                " WHERE key = ? AND state IN ('pending', 'needs_approval')",
                (reason, _now(), key),
            )

    def mark_needs_approval(self, key: str, need: ApprovalNeed) -> None:
        """Park an entry the server refused as over the staff member's limits: it is not sent
        again until someone approves it (:meth:`approval_key`) or it is cancelled."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'needs_approval', approval = ?, last_error = ?,"
                " attempts = attempts + 1, updated_at = ?"
                " WHERE key = ? AND state IN ('pending', 'needs_approval')",
                (msgspec.json.encode(need).decode(), need.detail, _now(), key),
            )

    def approval_key(self, key: str) -> str:
        """The Idempotency-Key for the approver's request, minted and committed on first use
        and the same ever after, so a re-sent approval never credits twice.

        Raises LookupError unless the entry is waiting for approval.
        """
        with self._tx() as conn:
            row = conn.execute(
                "SELECT approval_key FROM outbox WHERE key = ? AND state = 'needs_approval'",
                (key,),
            ).fetchone()
            if row is None:
                raise LookupError(f"outbox entry {key} is not waiting for approval")
            if row[0]:
                return str(row[0])
            minted = str(uuid7())
            conn.execute(
                "UPDATE outbox SET approval_key = ?, updated_at = ? WHERE key = ?",
                (minted, _now(), key),
            )
        return minted

    def cancel(self, key: str, reason: str) -> bool:
        """Drop an entry waiting for approval (kept as rejected with ``reason``); False if it
        was not waiting (already approved, cancelled or never refused)."""
        with self._tx() as conn:
            changed = conn.execute(
                "UPDATE outbox SET state = 'rejected', last_error = ?, updated_at = ?"
                " WHERE key = ? AND state = 'needs_approval'",
                (reason, _now(), key),
            ).rowcount
        return changed == 1


def _entry(row: tuple[object, ...]) -> OutboxEntry:
    (key, kind, guest_id, code, body, scanned_at, created_at, state, attempts, error, response,
     approval, approval_key, approved_by) = row  # fmt: skip
    return OutboxEntry(
        key=str(key),
        kind=str(kind),
        guest_id=str(guest_id) if guest_id else None,
        code=str(code) if code else None,
        accrual=msgspec.json.decode(str(body), type=contract.AccrualIn),
        scanned_at=datetime.fromisoformat(str(scanned_at)) if scanned_at else None,
        created_at=datetime.fromisoformat(str(created_at)),
        # Only this module writes the column, and only these four states.
        state=cast(EntryState, str(state)),
        attempts=int(str(attempts)),
        last_error=str(error) if error else None,
        transfer=msgspec.json.decode(str(response), type=contract.Transfer) if response else None,
        approval=msgspec.json.decode(str(approval), type=ApprovalNeed) if approval else None,
        approval_key=str(approval_key) if approval_key else None,
        approved_by=str(approved_by) if approved_by else None,
    )


class OutboxApi(Protocol):
    """The two server calls the relay needs (``KioskApi`` or a fake in tests)."""

    async def scan(self, code: str, scanned_at: datetime | None = None) -> contract.GuestCard: ...

    async def accrue(
        self,
        guest_id: UUID | str,
        body: contract.AccrualIn,
        idempotency_key: UUID | str,
        access_token: str | None = None,
    ) -> contract.Transfer: ...


@dataclass(slots=True)
class DrainReport:
    delivered: list[tuple[OutboxEntry, contract.Transfer]] = field(default_factory=list)
    rejected: list[tuple[OutboxEntry, ApiProblem]] = field(default_factory=list)
    # Refused as over the staff member's limits: now waiting for an approver.
    needs_approval: list[tuple[OutboxEntry, ApprovalNeed]] = field(default_factory=list)
    # Why the drain stopped early (offline, signed out, server busy), if it did.
    stopped: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """What became of an approver's request; ``entry`` is as stored afterwards."""

    entry: OutboxEntry
    transfer: contract.Transfer | None = None  # delivered
    problem: ApiProblem | None = None  # refused: rejected, or still waiting (see entry.state)
    offline: bool = False  # not answered: still waiting, the same key goes next time


class OutboxRelay:
    """Sends pending entries with their stored keys; at most one drain runs at a time."""

    def __init__(self, outbox: Outbox, api: OutboxApi, batch_size: int = 50) -> None:
        self.outbox = outbox
        self.api = api
        self.batch_size = batch_size
        self._lock = asyncio.Lock()

    async def drain(self, only_key: str | None = None) -> DrainReport:
        """Deliver pending entries oldest first (or just ``only_key``).

        Stops at the first sign that the server is unreachable or the kiosk is signed out;
        those entries stay pending. Never sends an entry that is already delivered.
        """
        report = DrainReport()
        async with self._lock:
            # Read the pending set inside the lock: a concurrent drain may have delivered some.
            if only_key is not None:
                entry = self.outbox.get(only_key)
                pending = [entry] if entry is not None and entry.state == "pending" else []
            else:
                pending = self.outbox.entries("pending", self.batch_size)
            for entry in pending:
                stop = await self._deliver(entry, report)
                if stop:
                    report.stopped = stop
                    break
        return report

    async def _deliver(self, entry: OutboxEntry, report: DrainReport) -> str | None:
        try:
            guest_id = entry.guest_id
            if guest_id is None:
                assert entry.code is not None
                card = await self.api.scan(entry.code, entry.scanned_at)
                guest_id = str(card.guest.id)
                self.outbox.resolve_guest(entry.key, guest_id)
            transfer = await self.api.accrue(guest_id, entry.accrual, entry.key)
        except Offline as exc:
            self.outbox.note_failure(entry.key, str(exc))
            return "offline"
        except ApiProblem as problem:
            if problem.slug == APPROVAL_SLUG:
                need = ApprovalNeed.of(problem)
                self.outbox.mark_needs_approval(entry.key, need)
                report.needs_approval.append((entry, need))
                return None
            if problem.status == 401:
                self.outbox.note_failure(entry.key, problem.detail)
                return "signed-out"
            if problem.retryable:
                self.outbox.note_failure(entry.key, f"{problem.slug}: {problem.detail}")
                return "server-busy"
            self.outbox.mark_rejected(entry.key, f"{problem.slug}: {problem.detail}")
            report.rejected.append((entry, problem))
            return None
        self.outbox.mark_delivered(entry.key, transfer)
        report.delivered.append((entry, transfer))
        return None

    async def send_approved(self, key: str, access_token: str, approver: str) -> ApprovalOutcome:
        """Send an entry waiting for approval as the approver: with their ``access_token``
        (so the server applies their role's limits and its audit names them) and the entry's
        approval key, committed before the request leaves.

        Delivered, the entry is done. Over the approver's own limits, unanswered, busy or
        their token refused: it keeps waiting. Any other refusal rejects it with the reason.
        Raises LookupError unless the entry is waiting for approval.
        """
        async with self._lock:
            entry = self.outbox.get(key)
            if entry is None or entry.state != "needs_approval" or entry.guest_id is None:
                raise LookupError(f"outbox entry {key} is not waiting for approval")
            approval_key = self.outbox.approval_key(key)
            try:
                transfer = await self.api.accrue(
                    entry.guest_id, entry.accrual, approval_key, access_token=access_token
                )
            except Offline as exc:
                self.outbox.note_failure(key, str(exc))
                return ApprovalOutcome(self._stored(key), offline=True)
            except ApiProblem as problem:
                reason = f"{problem.slug}: {problem.detail}"
                if problem.slug == APPROVAL_SLUG:
                    self.outbox.mark_needs_approval(key, ApprovalNeed.of(problem))
                elif problem.status == 401 or problem.retryable:
                    self.outbox.note_failure(key, reason)
                else:
                    self.outbox.mark_rejected(key, f"{reason} (approver {approver})")
                return ApprovalOutcome(self._stored(key), problem=problem)
            self.outbox.mark_delivered(key, transfer, approved_by=approver)
            return ApprovalOutcome(self._stored(key), transfer=transfer)

    def _stored(self, key: str) -> OutboxEntry:
        entry = self.outbox.get(key)
        assert entry is not None  # entries are never deleted
        return entry
