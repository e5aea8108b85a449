"""Guest sign-in with a one-time code, and rotating refresh tokens for guests and staff."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from server.auth.notifier import Notifier
from server.auth.revocation import Revocations
from server.auth.tokens import TokenIssuer
from server.guests.service import Guests, normalise_phone
from server.infra.db import Database
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.infra.ratelimit import count_failure, limit_all, refuse_if_over
from server.infra.redis import RedisGate, RedisUnavailable
from server.settings import Settings
from server.staff.model import needs_totp
from shared import contract

__all__ = ["Auth"]

INSERT_REFRESH = """
INSERT INTO refresh_tokens (id, family_id, subject_kind, subject_id, token_hash, expires_at,
                            device_id, location_ids)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
REFRESH_FOR_UPDATE = """
SELECT id, family_id, subject_kind, subject_id, expires_at, used_at, revoked_at, device_id,
       location_ids
FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE
"""
USE_REFRESH = "UPDATE refresh_tokens SET used_at = now() WHERE id = $1"
REVOKE_FAMILY = (
    "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL"
)
GUEST_BRAND = "SELECT brand_id FROM guests WHERE id = $1 AND erased_at IS NULL"
STAFF_PRINCIPAL = "SELECT id, brand_id, role, location_ids FROM staff_users WHERE id = $1"
# What a kiosk session's refresh rechecks: the device is still paired, in the staff member's
# brand, and the staff member's scope still covers its location (empty: the whole brand).
KIOSK_SESSION = """
SELECT s.role, s.totp_secret
FROM kiosk_devices d
JOIN locations l ON l.id = d.location_id
JOIN staff_users s ON s.id = $2 AND s.brand_id = l.brand_id
WHERE d.id = $1 AND d.paired_at IS NOT NULL
  AND (cardinality(s.location_ids) = 0 OR d.location_id = ANY (s.location_ids))
"""


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Auth:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        gate: RedisGate,
        tokens: TokenIssuer,
        guests: Guests,
        notifier: Notifier,
    ) -> None:
        self.settings = settings
        self.db = db
        self.gate = gate
        self.tokens = tokens
        self.guests = guests
        self.notifier = notifier
        self.revocations = Revocations(db, gate, settings.access_ttl_s)

    async def send_code(self, body: contract.OtpRequest, client_ip: str) -> contract.OtpSent:
        """Send a 6-digit code; at most ``otp_sends_per_hour`` per phone, and per hour
        ``otp_sends_per_client_per_hour`` per client address, ``otp_sends_per_brand_per_hour``
        per brand and ``otp_sends_global_per_hour`` in all (429 ``too-many-codes``). Every
        send costs the chain money, so without Redis no code is sent (503)."""
        phone = normalise_phone(body.phone)
        await self._limit_sends(client_ip)
        code = f"{secrets.randbelow(1_000_000):06d}"
        sends_key, otp_key = f"rg:otp-sends:{phone}", f"rg:otp:{phone}"

        async def store() -> int:
            async with self.gate.client.pipeline(transaction=True) as pipe:
                # SET NX EX then INCR: a fixed one-hour window (EXPIRE NX needs Redis 7).
                pipe.set(sends_key, 0, ex=3600, nx=True)
                pipe.incr(sends_key)
                _, sends = await pipe.execute()
            if int(sends) > self.settings.otp_sends_per_hour:
                # Refused sends write no code: each new code resets the attempts, so a refused
                # send that wrote one gave an attacker five more guesses, without limit.
                return int(sends)
            async with self.gate.client.pipeline(transaction=True) as pipe:
                pipe.delete(otp_key)
                pipe.hset(otp_key, mapping={"code": _hash(phone + code).hex(), "attempts": 0})
                pipe.expire(otp_key, self.settings.otp_ttl_s)
                await pipe.execute()
            return int(sends)

        try:
            sends = await self.gate.run(store)
        except RedisUnavailable:
            raise Problem(
                503, "sign-in-unavailable", "sign-in is briefly unavailable; try again in a minute"
            ) from None
        if sends > self.settings.otp_sends_per_hour:
            raise Problem(
                429,
                "too-many-codes",
                "too many codes for this phone; try again later",
                retry_after_s=3600,
            )
        await self.notifier.send_code(phone, code)
        return contract.OtpSent(phone=phone, expires_in_s=self.settings.otp_ttl_s)

    async def _limit_sends(self, client_ip: str) -> None:
        """The SMS budget: per client address first (so one client cannot spend the brand's
        budget), then per brand, then the global hourly budget. Fails closed."""
        async with self.db.connection() as conn:
            brand_id = await self.guests.brand_id(conn)
        await limit_all(
            self.gate,
            "codes",
            [
                (f"client:{client_ip}", self.settings.otp_sends_per_client_per_hour,
                 "codes from this address"),
                (f"brand:{brand_id}", self.settings.otp_sends_per_brand_per_hour, "codes right now"),
                ("global", self.settings.otp_sends_global_per_hour, "codes right now"),
            ],
            3600,
        )  # fmt: skip

    async def verify_code(self, body: contract.OtpVerify, client_ip: str) -> contract.TokenPair:
        """Exchange a valid code (single use, limited attempts) for tokens; enrols new guests.

        Wrong or unknown codes from one client address, whichever phones they name, are
        limited to ``otp_wrong_codes_per_client_per_hour`` (429 ``too-many-wrong-codes``).
        """
        phone = normalise_phone(body.phone)
        otp_key = f"rg:otp:{phone}"
        await refuse_if_over(
            self.gate, "wrong-codes", client_ip, self.settings.otp_wrong_codes_per_client_per_hour,
            "wrong codes from this address", when_down="refuse",
        )  # fmt: skip

        async def check() -> tuple[str | None, int, int]:
            async with self.gate.client.pipeline(transaction=True) as pipe:
                pipe.hget(otp_key, "code")
                pipe.hincrby(otp_key, "attempts", 1)
                pipe.pttl(otp_key)
                stored, attempts, ttl_ms = await pipe.execute()
            return stored, int(attempts), int(ttl_ms)

        try:
            stored, attempts, ttl_ms = await self.gate.run(check)
        except RedisUnavailable:
            raise Problem(
                503, "sign-in-unavailable", "sign-in is briefly unavailable; try again in a minute"
            ) from None
        if stored is None:
            await self.gate.run(lambda: self.gate.client.delete(otp_key))
            await count_failure(self.gate, "wrong-codes", client_ip, 3600)
            raise Problem(401, "code-expired", "no valid code for this phone; ask for a new one")
        if attempts > self.settings.otp_max_attempts:
            await self.gate.run(lambda: self.gate.client.delete(otp_key))
            raise Problem(429, "too-many-attempts", "too many wrong codes; ask for a new one")
        if not hmac.compare_digest(stored, _hash(phone + body.code).hex()):
            await count_failure(self.gate, "wrong-codes", client_ip, 3600)
            raise Problem(401, "wrong-code", "the code is not right")
        # Deleting is the claim: of two concurrent verifications of one code, one deletes it.
        if not await self.gate.run(lambda: self.gate.client.delete(otp_key)):
            raise Problem(401, "code-expired", "no valid code for this phone; ask for a new one")
        welcome = None
        try:
            async with self.db.transaction() as conn:
                brand_id = await self.guests.brand_id(conn)
                guest_id, _, welcome = await self.guests.enrol(
                    conn, brand_id, phone, body.first_name or ""
                )
                pair = await self.issue(
                    conn, Principal(kind="guest", subject_id=guest_id, brand_id=brand_id)
                )
        except Exception:
            # Nothing was written: give the code back, so that the guest can send it again
            # (with a usable name, or once the database answers) rather than ask for another.
            await self._give_back_code(otp_key, stored, attempts, ttl_ms)
            raise
        await self.guests.loyalty.mirror_all([welcome])
        return pair

    async def _give_back_code(self, otp_key: str, stored: str, attempts: int, ttl_ms: int) -> None:
        if ttl_ms <= 0:
            return

        async def restore() -> None:
            async with self.gate.client.pipeline(transaction=True) as pipe:
                pipe.hset(otp_key, mapping={"code": stored, "attempts": attempts})
                pipe.pexpire(otp_key, ttl_ms)
                await pipe.execute()

        with contextlib.suppress(RedisUnavailable):
            await self.gate.run(restore)

    async def issue(
        self, conn: asyncpg.Connection, principal: Principal, family_id: UUID | None = None
    ) -> contract.TokenPair:
        """An access token plus a new refresh token in ``family_id`` (a new family if None)."""
        refresh = secrets.token_urlsafe(32)
        family_id = family_id or uuid.uuid4()
        principal = replace(principal, family_id=family_id)
        await conn.execute(
            INSERT_REFRESH,
            uuid.uuid4(),
            family_id,
            principal.kind,
            principal.subject_id,
            _hash(refresh),
            datetime.now(UTC) + timedelta(seconds=self.settings.refresh_ttl_s),
            principal.device_id,
            # Only a device-bound token narrows the staff member's own scope.
            sorted(principal.location_ids) if principal.device_id else None,
        )
        return contract.TokenPair(
            access_token=self.tokens.issue(principal),
            refresh_token=refresh,
            expires_in=self.tokens.access_ttl_s,
            guest_id=principal.subject_id if principal.kind == "guest" else None,
            staff_id=principal.subject_id if principal.kind == "staff" else None,
            role=principal.role if principal.kind == "staff" else None,
            location_ids=sorted(principal.location_ids),
        )

    async def refresh(self, body: contract.RefreshIn) -> contract.TokenPair:
        """Rotate a refresh token; a reused one revokes its whole family (theft detection)."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(REFRESH_FOR_UPDATE, _hash(body.refresh_token))
            if (
                row is None
                or row["revoked_at"] is not None
                or row["expires_at"] < datetime.now(UTC)
            ):
                raise Problem(401, "invalid-refresh-token", "sign in again")
            refused: Problem | None = None
            if row["used_at"] is not None:
                refused = Problem(
                    401,
                    "refresh-token-reused",
                    "this refresh token was already used; every session of it is signed out",
                )
            else:
                await conn.execute(USE_REFRESH, row["id"])
                principal = await self.principal_for(conn, row["subject_kind"], row["subject_id"])
                if row["device_id"] is not None:
                    principal = replace(
                        principal,
                        device_id=row["device_id"],
                        location_ids=frozenset(row["location_ids"]),
                    )
                    refused = await self._kiosk_session_ended(conn, principal)
            if refused is not None:
                # Committed before the refusal: no token of the family works any more.
                await conn.execute(REVOKE_FAMILY, row["family_id"])
            else:
                pair = await self.issue(conn, principal, row["family_id"])
        if refused is not None:
            await self.revocations.deny(row["family_id"])
            raise refused
        return pair

    async def sign_out(self, principal: Principal) -> None:
        """End the caller's session: its refresh tokens and its access tokens, at once.

        Refuses 409 ``no-session`` for a token issued outside a session (``regulars token``),
        which only its expiry ends.
        """
        if principal.family_id is None:
            raise Problem(
                409,
                "no-session",
                "this access token belongs to no session; it ends when it expires",
            )
        async with self.db.transaction() as conn:
            await conn.execute(REVOKE_FAMILY, principal.family_id)
        await self.revocations.deny(principal.family_id)

    async def _kiosk_session_ended(
        self, conn: asyncpg.Connection, principal: Principal
    ) -> Problem | None:
        """Why a kiosk (PIN) session may not go on, checked at each refresh as at sign-in: the
        staff member no longer covers the device's location, or their role now signs in with
        a second factor, which a PIN session would otherwise get around."""
        session = await conn.fetchrow(KIOSK_SESSION, principal.device_id, principal.subject_id)
        if session is None:
            return Problem(401, "invalid-refresh-token", "sign in again on this device")
        if needs_totp(session["role"], session["totp_secret"]):
            return Problem(
                401,
                "second-factor-required",
                "this role signs in with the password and the authenticator code, not a PIN",
            )
        return None

    async def principal_for(
        self, conn: asyncpg.Connection, kind: str, subject_id: UUID
    ) -> Principal:
        if kind == "guest":
            brand_id = await conn.fetchval(GUEST_BRAND, subject_id)
            if brand_id is None:
                raise Problem(401, "invalid-refresh-token", "sign in again")
            return Principal(kind="guest", subject_id=subject_id, brand_id=brand_id)
        staff = await conn.fetchrow(STAFF_PRINCIPAL, subject_id)
        if staff is None:
            raise Problem(401, "invalid-refresh-token", "sign in again")
        return Principal(
            kind="staff",
            subject_id=staff["id"],
            brand_id=staff["brand_id"],
            role=staff["role"],
            location_ids=frozenset(staff["location_ids"]),
        )
