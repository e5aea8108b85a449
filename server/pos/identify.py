"""The guest a till names: by QR (judged at a given moment), card, phone or the till's own
customer id. Lookups go through the guests domain (server/guests/identities.py);
:class:`TillGuests` is the order a receipt's guest is tried in, one receipt or a chunk."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from server.guests import identities
from server.guests.service import normalise_phone
from server.infra.problems import Problem
from server.pos.auth import Till
from server.settings import Settings
from shared import qr
from shared.pos import ReceiptIn

__all__ = [
    "PhoneForms",
    "Resolved",
    "TillGuests",
    "by_card",
    "by_cards",
    "by_phone",
    "by_phones",
    "by_qr",
    "qr_refusal",
]


class PhoneForms:
    """Phone numbers as tills type them, in E.164 (None: not a phone number), remembered up
    to ``size`` numbers: a batch names its regulars again and again, and parsing a number
    costs more than looking its guest up (~100 us)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._known: dict[str, str | None] = {}

    def e164(self, phone: str) -> str | None:
        if phone in self._known:
            return self._known[phone]
        try:
            number: str | None = normalise_phone(phone)
        except Problem:
            number = None
        if len(self._known) >= self.size:
            self._known.clear()
        self._known[phone] = number
        return number


async def by_qr(
    conn: asyncpg.Connection, settings: Settings, brand_id: UUID, code: str, at: datetime
) -> tuple[UUID | None, str | None]:
    """(the guest, None), or (None, why not): 'malformed', 'forged', 'expired' (not valid at
    ``at``) or 'unknown' (no such guest at this brand)."""
    try:
        scanned = qr.parse(code)
    except qr.QrError as exc:
        return None, exc.reason
    found = await identities.by_public_id(conn, brand_id, scanned.public_id)
    if found is None:
        return None, "unknown"
    guest_id, secret = found
    refusal = qr_refusal(scanned, secret, at, settings)
    return (None, refusal) if refusal else (guest_id, None)


def qr_refusal(
    scanned: qr.ScannedCode, secret: bytes, at: datetime, settings: Settings
) -> str | None:
    """Why a scanned code was not valid at ``at`` under its guest's ``secret`` ('forged',
    'expired'), or None when it was."""
    try:
        qr.verify(
            scanned,
            secret,
            now_s=at.timestamp(),
            step_s=settings.qr_step_s,
            valid_steps=settings.qr_valid_steps,
        )
    except qr.QrError as exc:
        return exc.reason
    return None


async def by_card(conn: asyncpg.Connection, brand_id: UUID, card_number: str) -> UUID | None:
    return await identities.by_card(conn, brand_id, card_number)


async def by_phone(conn: asyncpg.Connection, brand_id: UUID, phone: str) -> UUID | None:
    """By phone in any common notation; None for something that is not a phone number."""
    try:
        phone_e164 = normalise_phone(phone)
    except Problem:
        return None
    return await identities.by_phone(conn, brand_id, phone_e164)


async def by_cards(
    conn: asyncpg.Connection, brand_id: UUID, card_numbers: Collection[str]
) -> dict[str, UUID]:
    """:func:`by_card` for many numbers in one query (keyed as given; unknown ones left out)."""
    return await identities.by_cards(conn, brand_id, sorted(card_numbers))


async def by_phones(
    conn: asyncpg.Connection, brand_id: UUID, phones: Collection[str], forms: PhoneForms
) -> dict[str, UUID]:
    """:func:`by_phone` for many numbers in one query, keyed as given; a number with no guest,
    or that is not a phone number, is left out."""
    e164 = {phone: number for phone in phones if (number := forms.e164(phone)) is not None}
    found = await identities.by_phones(conn, brand_id, sorted(set(e164.values())))
    return {phone: found[number] for phone, number in e164.items() if number in found}


@dataclass(frozen=True, slots=True)
class Resolved:
    """The guest a receipt named, if found."""

    guest_id: UUID | None
    # Why a named guest was not resolved (an expired or forged QR): kept anonymous.
    unresolved: str | None = None


class TillGuests:
    """The guest a till's receipt names (QR, card, phone, the till's customer id), as the
    receipt's transaction and the batch's chunks look them up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._phones = PhoneForms(settings.pos_phones_remembered)

    async def resolve_many(
        self, conn: asyncpg.Connection, till: Till, receipts: Sequence[ReceiptIn]
    ) -> list[Resolved]:
        """:meth:`resolve` of each receipt, in order: the cards and phones of the chunk
        looked up in one query each; a receipt naming a QR or the till's customer id is
        resolved on its own (in order: a customer id linked by one counts for the next)."""
        plain = [
            r.guest
            for r in receipts
            if r.guest and not (r.guest.qr_code or r.guest.pos_customer_id)
        ]
        cards = {g.card_number for g in plain if g.card_number}
        phones = {g.phone for g in plain if g.phone}
        by_card = await by_cards(conn, till.brand_id, cards) if cards else {}
        by_phone = await by_phones(conn, till.brand_id, phones, self._phones) if phones else {}
        guests: list[Resolved] = []
        for receipt in receipts:
            named = receipt.guest
            if named is None:
                guests.append(Resolved(None))
            elif named.qr_code or named.pos_customer_id:
                guests.append(await self.resolve(conn, till, receipt))
            else:
                guest_id = by_card.get(named.card_number) if named.card_number else None
                if guest_id is None and named.phone:
                    guest_id = by_phone.get(named.phone)
                guests.append(Resolved(guest_id))
        return guests

    async def resolve(self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn) -> Resolved:
        """The guest the till named, tried QR, card, phone, then the till's customer id.

        A QR is checked against its validity when it was scanned (``scanned_at``, else when
        the sale happened), so an offline till's receipt hours late still counts. A QR that
        is forged or was already expired keeps the receipt anonymous (with a claim code), and
        the answer says why: the sale happened, the till cannot ask the guest again.
        """
        named = receipt.guest
        if named is None:
            return Resolved(None)
        guest_id: UUID | None = None
        unresolved: str | None = None
        if named.qr_code:
            guest_id, unresolved = await self._by_qr(till, receipt, conn, named.qr_code)
        if guest_id is None and named.card_number:
            guest_id = await by_card(conn, till.brand_id, named.card_number)
        if guest_id is None and named.phone:
            guest_id = await by_phone(conn, till.brand_id, named.phone)
        customer = named.pos_customer_id
        if customer and guest_id is None:
            guest_id = await identities.by_pos_customer(
                conn, till.brand_id, till.integration_id, customer
            )
        elif customer and guest_id is not None:
            await identities.link_pos_customer(
                conn, till.brand_id, guest_id, till.integration_id, customer
            )
        return Resolved(guest_id, None if guest_id else unresolved)

    async def _by_qr(
        self, till: Till, receipt: ReceiptIn, conn: asyncpg.Connection, code: str
    ) -> tuple[UUID | None, str | None]:
        """The QR judged at its scan time, which may be at most ``pos_scan_max_age_s`` ago."""
        named = receipt.guest
        at = (named.scanned_at if named and named.scanned_at else None) or receipt.occurred_at
        if at.tzinfo is None:
            return None, "malformed"
        now = datetime.now(UTC)
        skew = timedelta(seconds=self.settings.scan_clock_skew_s)
        if at > now + skew or at < now - timedelta(seconds=self.settings.pos_scan_max_age_s):
            return None, "expired"
        return await by_qr(conn, self.settings, till.brand_id, code, at)
