"""Staff sign-in (password + TOTP, lockout), kiosk device pairing and PIN sign-in.

Tokens come from :meth:`Auth.issue`, so staff refresh tokens rotate like guests' do. A PIN
token is scoped to the device's location and carries the device id, which audit entries keep.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from server.infra.audit import audit, audit_device
from server.infra.db import Database
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.infra.ratelimit import count_failure, limit, refuse_if_over, reset_limit
from server.infra.redis import RedisGate
from server.settings import Settings
from server.staff import sql
from server.staff.model import (
    needs_totp,
    new_pairing_code,
    normalise_email,
    normalise_pairing_code,
    totp_step,
)
from server.staff.throttle import SignInThrottle, alert
from shared import contract
from shared.contract import DeviceCreated, DeviceIn, DevicePaired, PairIn

__all__ = ["Staff"]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# Issues an access and refresh token pair for a principal, in the caller's transaction.
IssueTokens = Callable[[asyncpg.Connection, Principal], Awaitable[contract.TokenPair]]


class Staff:
    def __init__(
        self, settings: Settings, db: Database, gate: RedisGate, issue_tokens: IssueTokens
    ) -> None:
        """``issue_tokens`` signs a staff member in (the auth domain's, wired by lifespan.py:
        staff owns the users, auth the tokens)."""
        self.settings = settings
        self.db = db
        self.gate = gate
        self.issue_tokens = issue_tokens
        self._hasher = PasswordHasher()
        # Verified against when the email is unknown, so timing does not reveal staff emails.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))
        self.client_throttle = SignInThrottle(
            gate,
            "client",
            settings.staff_sign_in_free_failures,
            settings.staff_sign_in_first_delay_s,
            settings.staff_sign_in_max_delay_s,
            settings.staff_sign_in_failures_per_client,
            settings.staff_sign_in_window_s,
        )
        self.device_throttle = SignInThrottle(
            gate,
            "device",
            settings.pin_attempts_per_window,
            settings.staff_sign_in_first_delay_s,
            settings.staff_sign_in_max_delay_s,
            settings.pin_failures_per_device,
            settings.pin_window_s,
        )

    async def _verify(self, stored_hash: str | None, secret: str) -> bool:
        # argon2 is deliberately slow: off the event loop.
        def check() -> bool:
            try:
                return self._hasher.verify(stored_hash or self._decoy, secret) and bool(stored_hash)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    # -- password sign-in ------------------------------------------------------------------

    async def sign_in(self, body: contract.StaffLogin, client_ip: str) -> contract.TokenPair:
        """Tokens for a right password (and TOTP for managers and admins).

        Failures are slowed down per client address first (429 ``sign-in-slowed`` /
        ``too-many-sign-ins``, server/staff/throttle.py). Refuses 401 ``invalid-credentials`` /
        ``totp-required`` / ``wrong-totp``, and 423 ``account-locked`` for
        ``staff_lockout_s`` after ``staff_max_failed_logins`` failures on the email from
        anywhere; the right password with a right TOTP code still signs in through that lock,
        so guessing at a manager's email cannot keep the manager out.
        """
        await self.client_throttle.check(client_ip)
        email = normalise_email(body.email)
        user = await self.db.fetchrow(sql.STAFF_BY_EMAIL, email)
        now = datetime.now(UTC)
        try:
            user = await self._authenticate(user, body, email, now)
        except Problem as refusal:
            if refusal.slug in _SIGN_IN_FAILURES:
                await self.client_throttle.failed(client_ip)
            raise
        principal = Principal(
            kind="staff",
            subject_id=user["id"],
            brand_id=user["brand_id"],
            role=user["role"],
            location_ids=frozenset(user["location_ids"]),
        )
        async with self.db.transaction() as conn:
            await conn.execute(sql.RECORD_SUCCESS, user["id"])
            await audit(conn, principal, "staff.sign_in", None, {"method": "password"})
            return await self.issue_tokens(conn, principal)

    async def _authenticate(
        self, user: asyncpg.Record | None, body: contract.StaffLogin, email: str, now: datetime
    ) -> asyncpg.Record:
        """The staff row whose password (and TOTP) ``body`` has right, or the refusal."""
        locked_until, locks_at = (
            await self._claim_attempt(user["id"]) if user is not None else (None, None)
        )
        if user is not None and locked_until is not None:
            await self._through_lock(user, body, now, locked_until)
            return user
        if not await self._verify(user["password_hash"] if user else None, body.password):
            if locks_at is not None:  # this attempt was the last one allowed
                raise self._locking(email, locks_at, now)
            raise Problem(401, "invalid-credentials", "the email or the password is not right")
        assert user is not None
        if needs_totp(user["role"], user["totp_secret"]):
            if not user["totp_secret"]:
                raise Problem(
                    403, "totp-not-enrolled", "this role needs a second factor; ask an admin"
                )
            if body.totp is None:
                raise Problem(
                    401, "totp-required", "enter the 6-digit code from your authenticator app"
                )
            step = totp_step(user["totp_secret"], body.totp, now)
            if step is None:  # counted as a failed attempt by the claim already
                if locks_at is not None:
                    raise self._locking(email, locks_at, now)
                raise Problem(401, "wrong-totp", "the authenticator code is not right")
            if await self.db.fetchval(sql.USE_TOTP_STEP, user["id"], step) is None:
                raise Problem(
                    401, "totp-reused", "this code was used already; wait for the next one"
                )
        return user

    def _locking(self, email: str, until: datetime, now: datetime) -> Problem:
        """The 423 of the failure that locks ``email``, raised as an alert too."""
        alert("email", "locked", email, self.settings.staff_max_failed_logins)
        return _locked(until, now)

    async def _through_lock(
        self, user: asyncpg.Record, body: contract.StaffLogin, now: datetime, until: datetime
    ) -> None:
        """Let a locked email's owner in with the right password and a right TOTP code, or
        refuse 423. The password is checked only after a right TOTP code, so a lock is no
        oracle for password guesses; users without a second factor wait for the lock."""
        secret = user["totp_secret"]
        step = totp_step(secret, body.totp, now) if secret and body.totp else None
        if step is None or not await self._verify(user["password_hash"], body.password):
            raise _locked(until, now)
        if await self.db.fetchval(sql.USE_TOTP_STEP, user["id"], step) is None:
            raise _locked(until, now)

    async def _claim_attempt(self, staff_id: UUID) -> tuple[datetime | None, datetime | None]:
        """Count an attempt before it is checked (a success clears the count): (when the
        lock ends, None) while the account is locked, else (None, when the lock starts) if
        this attempt reached the limit (its failure answers 423), else (None, None)."""
        claimed = await self.db.fetchrow(
            sql.CLAIM_ATTEMPT,
            staff_id,
            self.settings.staff_max_failed_logins,
            float(self.settings.staff_lockout_s),
        )
        if claimed is None:
            until = await self.db.fetchval(sql.LOCKED_UNTIL, staff_id)
            return until or datetime.now(UTC), None
        return None, cast(datetime | None, claimed["locked_until"])

    # -- kiosk devices ---------------------------------------------------------------------

    async def create_device(self, manager: Principal, body: DeviceIn) -> DeviceCreated:
        """Register a tablet at one of the manager's locations; the pairing code is shown once."""
        code = new_pairing_code()
        expires_at = datetime.now(UTC) + timedelta(seconds=self.settings.pairing_ttl_s)
        async with self.db.transaction() as conn:
            name = await conn.fetchval(sql.LOCATION_OF_BRAND, body.location_id, manager.brand_id)
            if name is None or not manager.covers(body.location_id):
                raise Problem(404, "location-not-found", f"no location {body.location_id}")
            device_id = await conn.fetchval(
                sql.INSERT_DEVICE,
                body.location_id,
                body.name,
                _digest(code),
                expires_at,
                manager.subject_id,
            )
            await audit(
                conn,
                manager,
                "device.create",
                None,
                {"device_id": str(device_id), "location_id": str(body.location_id)},
            )
        return DeviceCreated(device_id=device_id, pairing_code=code, expires_at=expires_at)

    async def pair(self, body: PairIn, client_ip: str) -> DevicePaired:
        """Trade a pairing code (single use, expiring) for the device's long-lived secret.

        At most ``pair_attempts_per_window`` unknown codes per client address per
        ``pin_window_s`` (429 ``too-many-pairing-attempts``). Unlike the PIN's 10,000 values,
        a code is one of 31^8 (~8.5e11) and lives ``pairing_ttl_s``: without Redis the limit
        lets attempts through rather than stop kiosks being paired during an outage.
        """
        await refuse_if_over(
            self.gate, "pairing-attempts", client_ip, self.settings.pair_attempts_per_window,
            "pairing attempts from this address",
        )  # fmt: skip
        secret = secrets.token_urlsafe(32)
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                sql.PAIR_DEVICE, _digest(normalise_pairing_code(body.pairing_code)), _digest(secret)
            )
            if row is None:
                await count_failure(
                    self.gate, "pairing-attempts", client_ip, self.settings.pin_window_s
                )
                raise Problem(
                    404,
                    "pairing-code-invalid",
                    "this pairing code is unknown, used or expired; ask a manager for a new one",
                )
            await audit_device(
                conn,
                brand_id=row["brand_id"],
                device_id=row["id"],
                action="device.pair",
                detail={"location_id": str(row["location_id"])},
            )
        return DevicePaired(
            device_id=row["id"],
            device_secret=secret,
            location_id=row["location_id"],
            location_name=row["location_name"],
        )

    # -- PIN sign-in on a paired device ----------------------------------------------------

    async def _paired_device(self, body: contract.PinLogin) -> asyncpg.Record:
        """The device row, if its secret is right (401 ``device-not-paired``) and the device
        is not slowed down for wrong PINs (server/staff/throttle.py)."""
        device = await self.db.fetchrow(sql.DEVICE, body.device_id)
        if device is None or not hmac.compare_digest(
            bytes(device["device_secret_hash"]), _digest(body.device_secret)
        ):
            raise Problem(401, "device-not-paired", "this device is not paired; pair it again")
        await self.device_throttle.check(str(body.device_id))
        return device

    async def pin_sign_in(self, body: contract.PinLogin) -> contract.TokenPair:
        """Tokens scoped to the device's location, for a staff member of that location.

        The device is checked first, so that a wrong device secret cannot use up a staff
        member's attempts. Then at most ``pin_attempts_per_window`` attempts per device and
        email per ``pin_window_s``, and ``pin_attempts_per_day`` per email on all devices
        together (429 ``too-many-pin-attempts``; a success clears both counts): a PIN has
        only 10,000 values. Wrong PINs on a device, whoever they were for, slow that device
        down (server/staff/throttle.py). Wrong PINs do not lock the account itself, or anyone
        holding a paired tablet could lock a colleague out of the password sign-in; nor does a
        password lock stop the PIN, or guessing at an email would lock its owner out of the
        kiosk too. Managers and admins
        are refused (403 ``second-factor-required``): their roles need a second factor.
        """
        email = normalise_email(body.email)
        device = await self._paired_device(body)
        attempts = f"{body.device_id}:{email}"
        await limit(
            self.gate, "pin-attempts", attempts, self.settings.pin_attempts_per_window,
            self.settings.pin_window_s, "PIN attempts on this device", when_down="refuse",
        )  # fmt: skip
        await limit(
            self.gate, "pin-attempts-daily", email, self.settings.pin_attempts_per_day,
            86_400, "PIN attempts today", when_down="refuse",
        )  # fmt: skip
        user = await self.db.fetchrow(sql.STAFF_BY_EMAIL, email)
        allowed = (
            user is not None
            and user["brand_id"] == device["brand_id"]
            and (not user["location_ids"] or device["location_id"] in user["location_ids"])
        )
        if user is not None and allowed and needs_totp(user["role"], user["totp_secret"]):
            # Refused before the PIN is checked: no PIN of these roles can be guessed here.
            raise Problem(
                403,
                "second-factor-required",
                "this role signs in with the password and the authenticator code, not a PIN",
            )
        pin_ok = await self._verify(user["pin_hash"] if user and allowed else None, body.pin)
        if not pin_ok:
            await self.device_throttle.failed(str(body.device_id))
            raise Problem(401, "wrong-pin", "the email or the PIN is not right")
        assert user is not None
        principal = Principal(
            kind="staff",
            subject_id=user["id"],
            brand_id=user["brand_id"],
            role=user["role"],
            location_ids=frozenset({device["location_id"]}),
            device_id=device["id"],
        )
        async with self.db.transaction() as conn:
            await audit(conn, principal, "staff.sign_in", None, {"method": "pin"})
            pair = await self.issue_tokens(conn, principal)
        await reset_limit(self.gate, "pin-attempts", attempts)
        await reset_limit(self.gate, "pin-attempts-daily", email)
        return pair


# Refusals that count against the client address (not a missing second factor, not a reuse).
_SIGN_IN_FAILURES = frozenset({"invalid-credentials", "wrong-totp", "account-locked"})


def _locked(until: datetime, now: datetime) -> Problem:
    wait_s = max(int((until - now).total_seconds()), 1)
    return Problem(
        423,
        "account-locked",
        f"too many failed sign-ins; try again in {wait_s} seconds",
        retry_after_s=wait_s,
    )
