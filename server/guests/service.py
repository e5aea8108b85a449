"""Guests: enrolment (with the welcome bonus), profile, the rotating QR code."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import phonenumbers

from server.guests import sql
from server.infra.db import Database
from server.infra.problems import Problem
from server.loyalty.model import Movement
from server.loyalty.service import Loyalty
from server.settings import Settings
from shared import contract, qr

__all__ = ["Guests", "normalise_phone"]


def normalise_phone(raw: str, default_region: str = "DE") -> str:
    """The phone in E.164, or a 422 that says the number is not one."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise Problem(
            422, "invalid-phone", f"{raw!r} is not a valid phone number; use the +CC format"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class Guests:
    def __init__(self, settings: Settings, db: Database, loyalty: Loyalty) -> None:
        self.settings = settings
        self.db = db
        self.loyalty = loyalty

    async def brand_id(self, conn: asyncpg.Connection, slug: str | None = None) -> UUID:
        brand: UUID | None = await conn.fetchval(
            sql.BRAND_BY_SLUG if slug else sql.DEFAULT_BRAND, *([slug] if slug else [])
        )
        if brand is None:
            raise Problem(404, "brand-not-found", "no such brand; run `regulars seed --demo`?")
        return brand

    async def enrol(
        self,
        conn: asyncpg.Connection,
        brand_id: UUID,
        phone_e164: str,
        first_name: str = "",
        last_name: str = "",
        email: str | None = None,
    ) -> tuple[UUID, bool, Movement | None]:
        """The guest with this phone, created with an account and welcome bonus if new.

        Returns (guest id, created, the welcome credit to mirror in Redis after commit).
        """
        existing = await conn.fetchval(sql.FIND_BY_PHONE, brand_id, phone_e164)
        if existing is not None:
            return existing, False, None
        card = "".join(secrets.choice("0123456789") for _ in range(12))
        guest_id = await conn.fetchval(
            sql.INSERT_GUEST,
            brand_id,
            qr.new_public_id(),
            qr.new_secret(),
            card,
            phone_e164,
            first_name,
            last_name,
            email,
        )
        if guest_id is None:  # a concurrent sign-in created it first
            return await conn.fetchval(sql.FIND_BY_PHONE, brand_id, phone_e164), False, None
        account_id = await self.loyalty.open_account(conn, brand_id, guest_id)
        program = await self.loyalty.programs.get(brand_id, conn)
        welcome = None
        if program.welcome_bonus_points:
            welcome = await self.loyalty.earn(
                conn,
                brand_id=brand_id,
                guest_id=guest_id,
                account_id=account_id,
                points=program.welcome_bonus_points,
                code="welcome",
            )
        return guest_id, True, welcome

    async def profile(self, guest_id: UUID) -> asyncpg.Record:
        row = await self.db.fetchrow(sql.GUEST, guest_id)
        if row is None:
            raise Problem(404, "guest-not-found", "no such guest")
        return row

    async def me(self, guest_id: UUID, brand_id: UUID) -> contract.Me:
        row = await self.profile(guest_id)
        wallet = await self.loyalty.wallet(guest_id, brand_id)
        return contract.Me(
            id=row["id"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            phone=row["phone_e164"],
            email=row["email"],
            tier=wallet.tier,
            card_number=row["card_number"],
        )

    async def qr_code(self, guest_id: UUID) -> contract.QrCode:
        row = await self.profile(guest_id)
        step_s, steps = self.settings.qr_step_s, self.settings.qr_valid_steps
        code = qr.generate(row["public_id"], bytes(row["qr_secret"]), step_s=step_s)
        until = qr.valid_until(code, step_s, steps)
        return contract.QrCode(
            code=code, valid_until=datetime.fromtimestamp(until, UTC), secret_ttl_s=step_s * steps
        )
