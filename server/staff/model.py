"""Staff and kiosk devices: the pure rules of sign-in and pairing (no I/O)."""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime

import pyotp

__all__ = [
    "PAIRING_ALPHABET",
    "PAIRING_CODE_LEN",
    "SECOND_FACTOR_ROLES",
    "needs_totp",
    "new_pairing_code",
    "normalise_email",
    "normalise_pairing_code",
    "totp_step",
]

# No 0/O, 1/I/L: a pairing code is read off one screen and typed on another.
PAIRING_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PAIRING_CODE_LEN = 8
SECOND_FACTOR_ROLES = frozenset({"manager", "admin"})


def new_pairing_code() -> str:
    return "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(PAIRING_CODE_LEN))


def normalise_pairing_code(raw: str) -> str:
    """Upper case without spaces or dashes, so "abcd-efgh" is the code ABCDEFGH."""
    return "".join(ch for ch in raw.upper() if ch not in " -")


def normalise_email(raw: str) -> str:
    return raw.strip().lower()


def totp_step(secret: str, code: str, now: datetime) -> int | None:
    """The 30-second step ``code`` belongs to (one step of clock drift either way), or None."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def needs_totp(role: str, totp_secret: str | None) -> bool:
    """Managers and admins sign in with a second factor (DESIGN §7)."""
    return role in SECOND_FACTOR_ROLES or totp_secret is not None
