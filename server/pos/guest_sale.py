"""A till's sale naming a guest by QR, card number or phone, in two statements (issue 23).

Why: taken in a transaction (``Intake.take_on``), such a sale is ~14 round trips (BEGIN, key,
guest, account, tier window, transfer, credit, time zone, profile lock and upsert, receipt,
COMMIT), and sending them was most of the API's time per receipt (docs/PERFORMANCE.md,
"Real-time intake"). Here, on a pooled connection outside a transaction:

1. one read (``sql.GUEST_SALE_READ``): whether the till's key is still active when it came
   from TillAuth's cache (else 401 ``invalid-key``, nothing written), the key stored for the
   receipt, the guest, their account and tier window (loyalty's ``loyalty_tier_window``),
   the location's time zone and the guest's profile, not locked;
2. in Python: the points at that tier (``PointsPort.plan_earn``: loyalty's rule) and the
   profile folded forward with this visit (``ProfileFold``: the counter's ``fold_visit``);
3. one write (``sql.TAKE_GUEST_SALE``, migration 0024): the key with its answer, the earn
   through loyalty's ``loyalty_earn``, the profile only if it is still the one read, the
   receipt and its lines. A profile changed meanwhile (another receipt of the guest, a visit,
   a refund, the tier recount: migrations 0023 and 0029) fails the statement with SQLSTATE
   40001, so nothing of it stays: the sale is read and tried again,
   ``pos_guest_sale_attempts`` times in all, then left to take_on.

The results are take_on's: the same points (the tier counted from the same window, now read
in the statement that the profile check ties to the write), transfer, account state, Redis
movement, profile row, receipt and answer. What it does not take (None: take_on does): a guest
not found, a QR that does not check out at its scan time (take_on then tries the card and
phone, or keeps the sale anonymous and says why), a guest without a profile row whose histograms are started (a first visit reads
the guest's order history), and a write that kept meeting concurrent changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from server.guests import identities
from server.loyalty.model import AccountState, tier_window_start
from server.pos import identify, sql
from server.pos.auth import Till, key_refused
from server.pos.model import with_points_earned
from server.pos.points import PlannedEarn, PointsPort
from server.pos.receipts import (
    PricedSale,
    ReceiptVisit,
    Taken,
    earn_reason,
    line_rows,
    request_digest,
    stored_answer,
    visit_of,
)
from server.settings import Settings
from shared import qr
from shared.pos import ReceiptIn, ReceiptOut

__all__ = ["GuestSales", "ProfileFold"]

_encode = msgspec.json.Encoder().encode

# The guest's stored profile row (GUEST_SALE_READ's profile columns, histograms started)
# after one more visit, at the location's time zone and ``now``: the columns that
# guest_profile_replace writes (server/counter/profiles.py, fold_stored; wired in lifespan).
ProfileFold = Callable[[asyncpg.Record, ReceiptVisit, str, datetime], dict[str, object]]


@dataclass(frozen=True, slots=True)
class _Scan:
    code: qr.ScannedCode
    at: datetime


class GuestSales:
    """:data:`server.pos.receipts.GuestSaleHook`: see the module."""

    def __init__(self, settings: Settings, points: PointsPort, fold: ProfileFold) -> None:
        self.attempts = settings.pos_guest_sale_attempts
        self.points = points
        self.fold = fold
        self._phones = identify.PhoneForms(settings.pos_phones_remembered)
        self._skew = timedelta(seconds=settings.scan_clock_skew_s)
        self._scan_max_age = timedelta(seconds=settings.pos_scan_max_age_s)
        self._settings = settings

    async def __call__(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, sale: PricedSale
    ) -> Taken | None:
        """Take ``sale`` in two statements, or answer its stored key (a replay, 409
        ``receipt-conflict``); None when take_on is to take it (module docstring)."""
        named = receipt.guest
        assert named is not None
        scan: _Scan | None = None
        if named.qr_code:
            scan = self._scan(receipt, named.qr_code)
            if scan is None:
                return None  # take_on tries the card or phone, or says why not
        digest = request_digest(receipt)
        for _ in range(self.attempts):
            seen = await self._read(conn, till, receipt, scan)
            if seen["request_hash"] is not None:
                return stored_answer(seen, receipt, digest)
            if seen["account_id"] is None or seen["weekday_counts"] is None:
                return None  # no such guest, or their first visit: take_on reads history
            if scan is not None and not self._verified(scan, seen["qr_secret"]):
                return None
            try:
                return await self._write(conn, till, receipt, sale, seen, digest)
            except asyncpg.TransactionRollbackError:
                continue  # the profile changed (or a deadlock): nothing was written
        return None

    def _scan(self, receipt: ReceiptIn, code: str) -> _Scan | None:
        """The QR and when it was scanned, if TillGuests.resolve would go on to look its guest up
        (None: it would not, and take_on says why)."""
        named = receipt.guest
        at = (named.scanned_at if named and named.scanned_at else None) or receipt.occurred_at
        now = datetime.now(UTC)
        if at.tzinfo is None or at > now + self._skew or at < now - self._scan_max_age:
            return None
        try:
            return _Scan(qr.parse(code), at)
        except qr.QrError:
            return None

    def _verified(self, scan: _Scan, secret: bytes | None) -> bool:
        """Whether the QR was valid when it was scanned (identify.by_qr's check)."""
        if secret is None:
            return False
        return identify.qr_refusal(scan.code, bytes(secret), scan.at, self._settings) is None

    async def _read(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, scan: _Scan | None
    ) -> asyncpg.Record:
        """GUEST_SALE_READ: by the QR's public id alone when there is a QR (if it does not
        check out, take_on tries the card and phone), else by card, else by phone."""
        named = receipt.guest
        assert named is not None
        program = await self.points.program(conn, till.brand_id)
        card = phone = None
        if scan is None:
            card = identities.card_digits(named.card_number) if named.card_number else None
            phone = self._phones.e164(named.phone) if named.phone else None
        row: asyncpg.Record | None = await conn.fetchrow(
            sql.GUEST_SALE_READ, till.integration_id, receipt.external_id, till.brand_id, card,
            phone, tier_window_start(program, datetime.now(UTC)), till.location_id,
            scan.code.public_id if scan else None, None if till.key_read else till.key_id,
        )  # fmt: skip
        assert row is not None, "an integration's location is there"
        if not row["key_active"]:
            raise key_refused()  # revoked since the cache read it; nothing is written yet
        return row

    async def _write(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipt: ReceiptIn,
        sale: PricedSale,
        seen: asyncpg.Record,
        digest: bytes,
    ) -> Taken:
        """The write statement; raises TransactionRollbackError when the profile changed."""
        guest_id: UUID = seen["guest_id"]
        program = await self.points.program(conn, till.brand_id)
        plan = await self.points.plan_earn(
            conn, brand_id=till.brand_id, program=program, earned_in_window=seen["earned"],
            paid_minor=sale.pricing.earning_paid_minor,
        )  # fmt: skip
        pricing = with_points_earned(sale.pricing, plan.points if plan else 0)
        points = sum(p.points_earned for p in pricing.lines)
        visit = visit_of(till, receipt, guest_id, pricing, points, sale.menu)
        profile = self.fold(seen, visit, seen["timezone"], datetime.now(UTC))
        receipt_id = uuid.uuid4()
        body = _encode(ReceiptOut(receipt_id=receipt_id, points_earned=points, guest_id=guest_id))
        row = await conn.fetchrow(
            sql.TAKE_GUEST_SALE,
            till.integration_id, receipt.external_id, digest, body,
            till.brand_id, receipt.occurred_at, receipt_id, till.location_id, guest_id,
            sale.currency, pricing.gross_minor, pricing.discount_minor,
            pricing.earning_paid_minor, pricing.points_tender, points, line_rows(pricing.lines),
            seen["account_id"], *_earn_args(plan, receipt),
            seen["visits_total"], seen["points_earned_12m"], profile,
        )  # fmt: skip
        assert row is not None
        if not row["claimed"]:  # a concurrent request took the key: its answer, or 409
            stored = await conn.fetchrow(sql.RECEIPT_KEY, till.integration_id, receipt.external_id)
            assert stored is not None, "a key held by a statement that committed"
            return stored_answer(stored, receipt, digest)
        state = AccountState(posted=row["posted"], pending=row["pending"], version=row["version"])
        earned = self.points.planned(guest_id, plan, state)
        return Taken("created", receipt_id, body, earned.moves)


def _earn_args(plan: PlannedEarn | None, receipt: ReceiptIn) -> tuple[object, ...]:
    """pos_take_guest_sale's earn arguments (0 points: nothing earned)."""
    reason = earn_reason(receipt)
    if plan is None:
        return 0, None, None, "earn", None, reason
    return plan.points, plan.transfer_id, plan.source_account_id, plan.code, plan.expires_at, reason
