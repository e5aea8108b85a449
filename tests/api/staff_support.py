"""Set-up helpers for the staff and kiosk tests: a second brand, staff users, tokens, codes.

Staff users made here belong to a throw-away brand (and sort after the demo staff by email),
so failed sign-ins and lockouts never touch the demo staff other tests sign in as.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher

from server.infra.identity import Principal
from shared import qr
from tests.conftest import Demo

PASSWORD = "correct horse battery"
PIN = "4321"
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@dataclass
class OtherBrand:
    brand_id: uuid.UUID
    location_id: uuid.UUID


@dataclass
class StaffUser:
    id: uuid.UUID
    email: str
    role: str


async def other_brand(services: Any) -> OtherBrand:
    """A fresh brand with one location, not the demo brand."""
    slug = f"zz-other-{uuid.uuid4().hex[:8]}"
    async with services.db.transaction() as conn:
        brand_id = await conn.fetchval(
            "INSERT INTO brands (slug, name, currency) VALUES ($1, $2, 'EUR') RETURNING id",
            slug,
            "Other Coffee",
        )
        location_id = await conn.fetchval(
            "INSERT INTO locations (brand_id, slug, name, timezone, opening_hours)"
            " VALUES ($1, 'main', 'Other Main', 'Europe/Berlin', '{}') RETURNING id",
            brand_id,
        )
    return OtherBrand(brand_id, location_id)


async def make_staff(
    services: Any,
    brand_id: uuid.UUID,
    role: str,
    location_ids: list[uuid.UUID] | None = None,
    totp_secret: str | None = None,
) -> StaffUser:
    email = f"zz-{role}-{uuid.uuid4().hex[:10]}@test.regulars.test"
    async with services.db.transaction() as conn:
        staff_id = await conn.fetchval(
            "INSERT INTO staff_users (brand_id, email, display_name, role, location_ids,"
            " password_hash, pin_hash, totp_secret) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " RETURNING id",
            brand_id,
            email,
            f"Test {role}",
            role,
            location_ids or [],
            _hasher.hash(PASSWORD),
            _hasher.hash(PIN),
            totp_secret,
        )
    return StaffUser(staff_id, email, role)


def staff_token(
    services: Any,
    demo: Demo,
    role: str = "barista",
    locations: set[uuid.UUID] | None = None,
    subject_id: uuid.UUID | None = None,
) -> str:
    """A staff access token with a chosen location scope (empty set: the whole brand)."""
    return str(
        services.tokens.issue(
            Principal(
                kind="staff",
                subject_id=subject_id or uuid.uuid4(),
                brand_id=demo.brand_id,
                role=role,
                location_ids=frozenset(locations or set()),
            )
        )
    )


def bearer(token: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def qr_of(services: Any, guest_id: uuid.UUID, now_s: float | None = None) -> str:
    """The guest's rotating code, as their phone would show it (at ``now_s``)."""
    row = await services.db.fetchrow(
        "SELECT public_id, qr_secret FROM guests WHERE id = $1", guest_id
    )
    return qr.generate(
        row["public_id"], bytes(row["qr_secret"]), now_s=now_s, step_s=services.settings.qr_step_s
    )


async def guest_of_other_brand(services: Any, brand_id: uuid.UUID) -> tuple[str, str]:
    """A guest of another brand: (a valid QR code now, their card number)."""
    card = "".join(secrets.choice("0123456789") for _ in range(12))
    public_id, secret = qr.new_public_id(), qr.new_secret()
    await services.db.fetchrow(
        "INSERT INTO guests (brand_id, public_id, qr_secret, card_number, phone_e164, first_name)"
        " VALUES ($1, $2, $3, $4, $5, 'Other') RETURNING id",
        brand_id,
        public_id,
        secret,
        card,
        f"+4917{secrets.randbelow(10**9):09d}",
    )
    return qr.generate(public_id, secret, step_s=services.settings.qr_step_s), card


async def audit_rows(services: Any, guest_id: uuid.UUID, action: str) -> list[Any]:
    return await services.db.fetch(
        "SELECT actor_id, device_id, detail FROM audit_log WHERE guest_id = $1 AND action = $2",
        guest_id,
        action,
    )
