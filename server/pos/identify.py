"""The guest a till names: by QR (judged at a given moment), card, phone or the till's own
customer id. Lookups go through the guests domain (server/guests/identities.py)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from uuid import UUID

import asyncpg

from server.guests import identities
from server.guests.service import normalise_phone
from server.infra.problems import Problem
from server.settings import Settings
from shared import qr

__all__ = ["PhoneForms", "by_card", "by_cards", "by_phone", "by_phones", "by_qr", "qr_refusal"]


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
