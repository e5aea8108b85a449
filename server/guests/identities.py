"""How events name a guest (DESIGN §11): phone, card number, the QR's public id, and a till's
own customer id (unique per integration, kept in ``identities``). Every lookup is within one
brand and skips erased guests; functions run on the caller's connection."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

__all__ = [
    "by_card",
    "by_cards",
    "by_phone",
    "by_phones",
    "by_pos_customer",
    "by_public_id",
    "card_digits",
    "link_pos_customer",
    "names",
]

BY_PUBLIC_ID = """
SELECT id, qr_secret FROM guests WHERE public_id = $1 AND brand_id = $2 AND erased_at IS NULL
"""
BY_PHONE = """
SELECT id FROM guests WHERE brand_id = $1 AND phone_e164 = $2 AND erased_at IS NULL
"""
BY_CARD = """
SELECT id FROM guests WHERE brand_id = $1 AND card_number = $2 AND erased_at IS NULL
"""
BY_PHONES = """
SELECT phone_e164, id FROM guests
WHERE brand_id = $1 AND phone_e164 = ANY($2::text[]) AND erased_at IS NULL
"""
BY_CARDS = """
SELECT card_number, id FROM guests
WHERE brand_id = $1 AND card_number = ANY($2::text[]) AND erased_at IS NULL
"""
BY_POS_CUSTOMER = """
SELECT i.guest_id FROM identities i JOIN guests g ON g.id = i.guest_id
WHERE i.brand_id = $1 AND i.kind = 'pos_customer' AND i.value = $2 AND i.integration_id = $3
  AND g.erased_at IS NULL
"""
# A customer id already linked stays with its guest: two guests meeting on one id is a merge
# (DESIGN §11), not something a receipt decides.
LINK_POS_CUSTOMER = """
INSERT INTO identities (brand_id, guest_id, kind, value, integration_id)
VALUES ($1, $2, 'pos_customer', $3, $4)
ON CONFLICT DO NOTHING
"""
NAMES = """
SELECT first_name, last_name FROM guests WHERE id = $1 AND brand_id = $2 AND erased_at IS NULL
"""


async def by_public_id(
    conn: asyncpg.Connection, brand_id: UUID, public_id: str
) -> tuple[UUID, bytes] | None:
    """The guest whose QR carries ``public_id``, with the secret that checks the QR."""
    row = await conn.fetchrow(BY_PUBLIC_ID, public_id, brand_id)
    return None if row is None else (row["id"], bytes(row["qr_secret"]))


async def by_phone(conn: asyncpg.Connection, brand_id: UUID, phone_e164: str) -> UUID | None:
    guest_id: UUID | None = await conn.fetchval(BY_PHONE, brand_id, phone_e164)
    return guest_id


async def by_card(conn: asyncpg.Connection, brand_id: UUID, card_number: str) -> UUID | None:
    """By the printed card number; spaces and dashes typed with it are ignored."""
    guest_id: UUID | None = await conn.fetchval(BY_CARD, brand_id, card_digits(card_number))
    return guest_id


async def by_phones(
    conn: asyncpg.Connection, brand_id: UUID, phones_e164: Sequence[str]
) -> dict[str, UUID]:
    """:func:`by_phone` for many numbers in one query: the guest of each number that has one."""
    rows = await conn.fetch(BY_PHONES, brand_id, list(phones_e164))
    return {row["phone_e164"]: row["id"] for row in rows}


async def by_cards(
    conn: asyncpg.Connection, brand_id: UUID, card_numbers: Sequence[str]
) -> dict[str, UUID]:
    """:func:`by_card` for many card numbers in one query: the guest of each number (as
    given) that has one."""
    digits = {number: card_digits(number) for number in card_numbers}
    rows = await conn.fetch(BY_CARDS, brand_id, sorted(set(digits.values())))
    found: dict[str, UUID] = {row["card_number"]: row["id"] for row in rows}
    return {number: found[d] for number, d in digits.items() if d in found}


def card_digits(card_number: str) -> str:
    """A card number as stored: its digits (spaces and dashes typed with it dropped)."""
    return "".join(ch for ch in card_number if ch.isdigit())


async def by_pos_customer(
    conn: asyncpg.Connection, brand_id: UUID, integration_id: UUID, value: str
) -> UUID | None:
    guest_id: UUID | None = await conn.fetchval(BY_POS_CUSTOMER, brand_id, value, integration_id)
    return guest_id


async def link_pos_customer(
    conn: asyncpg.Connection, brand_id: UUID, guest_id: UUID, integration_id: UUID, value: str
) -> None:
    """Remember that this till's customer ``value`` is ``guest_id`` (first link wins)."""
    await conn.execute(LINK_POS_CUSTOMER, brand_id, guest_id, value, integration_id)


async def names(conn: asyncpg.Connection, brand_id: UUID, guest_id: UUID) -> tuple[str, str] | None:
    """(first name, last name) of a guest of the brand; None for another brand's or erased."""
    row = await conn.fetchrow(NAMES, guest_id, brand_id)
    return None if row is None else (row["first_name"], row["last_name"])
