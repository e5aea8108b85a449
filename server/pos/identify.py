"""The guest a till names: by QR (judged at a given moment), card, phone or the till's own
customer id. Lookups go through the guests domain (server/guests/identities.py)."""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import datetime
from uuid import UUID

import asyncpg

from server.guests import identities
from server.guests.service import normalise_phone
from server.infra.problems import Problem
from server.settings import Settings
from shared import qr

__all__ = ["by_card", "by_cards", "by_phone", "by_phones", "by_qr"]

# Phone numbers whose E.164 form by_phones keeps (a pure function of the text; ~200 B each).
_PHONES_REMEMBERED = 4096


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
    try:
        qr.verify(
            scanned,
            secret,
            now_s=at.timestamp(),
            step_s=settings.qr_step_s,
            valid_steps=settings.qr_valid_steps,
        )
    except qr.QrError as exc:
        return None, exc.reason
    return guest_id, None


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
    conn: asyncpg.Connection, brand_id: UUID, phones: Collection[str]
) -> dict[str, UUID]:
    """:func:`by_phone` for many numbers in one query, keyed as given; a number with no guest,
    or that is not a phone number, is left out."""
    e164 = {phone: number for phone in phones if (number := _e164(phone)) is not None}
    found = await identities.by_phones(conn, brand_id, sorted(set(e164.values())))
    return {phone: found[number] for phone, number in e164.items() if number in found}


@functools.lru_cache(maxsize=_PHONES_REMEMBERED)
def _e164(phone: str) -> str | None:
    """The phone in E.164, or None; remembered: a batch names its regulars' numbers again
    and again, and parsing one costs more than looking it up."""
    try:
        return normalise_phone(phone)
    except Problem:
        return None
