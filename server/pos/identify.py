"""The guest a till names: by QR (judged at a given moment), card, phone or the till's own
customer id. Lookups go through the guests domain (server/guests/identities.py)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from server.guests import identities
from server.guests.service import normalise_phone
from server.infra.problems import Problem
from server.settings import Settings
from shared import qr

__all__ = ["by_card", "by_phone", "by_qr"]


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
