"""The rotating guest QR code (DESIGN §5), shared by the server, the guest app and the kiosk.

Format: ``RG1:<public id>:<step>:<mac>`` where ``step`` is ``unix time // step_s`` and ``mac``
is the first 10 base32 characters of HMAC-SHA256(secret, "RG1:<public id>:<step>"). Every
character is in the QR alphanumeric set (0-9, A-Z, ':'), so the code packs densely. The code
carries no personal data and is valid for ``valid_steps`` steps, so a screenshot is useless
tomorrow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

__all__ = [
    "QrError",
    "ScannedCode",
    "generate",
    "new_public_id",
    "new_secret",
    "parse",
    "valid_until",
    "verify",
]

VERSION = "RG1"
MAC_CHARS = 10
_PATTERN = re.compile(r"^RG1:([A-Z2-7]{8,32}):(\d{1,12}):([A-Z2-7]{10})$")


class QrError(ValueError):
    """The code is not a Regulars code, or it is forged, expired or from the future."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # 'malformed' | 'forged' | 'expired'


@dataclass(frozen=True, slots=True)
class ScannedCode:
    public_id: str
    step: int
    mac: str


def new_public_id() -> str:
    """A random guest public id: 16 base32 characters (80 bits)."""
    return base64.b32encode(secrets.token_bytes(10)).decode()


def new_secret() -> bytes:
    return secrets.token_bytes(20)


def _mac(secret: bytes, public_id: str, step: int) -> str:
    digest = hmac.new(secret, f"{VERSION}:{public_id}:{step}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:MAC_CHARS]


def generate(public_id: str, secret: bytes, now_s: float | None = None, step_s: int = 60) -> str:
    """The code to show right now."""
    step = int((time.time() if now_s is None else now_s) // step_s)
    return f"{VERSION}:{public_id}:{step}:{_mac(secret, public_id, step)}"


def valid_until(code: str, step_s: int = 60, valid_steps: int = 5) -> int:
    """Unix time (s) after which ``code`` is refused."""
    return (parse(code).step + valid_steps) * step_s


def parse(code: str) -> ScannedCode:
    """Split a scanned code; refuses anything that is not shaped like an RG1 code."""
    match = _PATTERN.match(code.strip().upper())
    if match is None:
        raise QrError("malformed", "not a Regulars guest code")
    return ScannedCode(match.group(1), int(match.group(2)), match.group(3))


def verify(
    scanned: ScannedCode,
    secret: bytes,
    now_s: float | None = None,
    step_s: int = 60,
    valid_steps: int = 5,
) -> None:
    """Accept a code made with ``secret`` within the last ``valid_steps`` steps.

    ``now_s`` may be a scan time recorded by an offline kiosk, so late verification of a
    queued accrual checks the code against when it was scanned. One step of clock skew into
    the future is tolerated.
    """
    expected = _mac(secret, scanned.public_id, scanned.step)
    if not hmac.compare_digest(expected, scanned.mac):
        raise QrError("forged", "this code was not issued by Regulars for this guest")
    current = int((time.time() if now_s is None else now_s) // step_s)
    if scanned.step > current + 1 or scanned.step <= current - valid_steps:
        raise QrError("expired", "this code has expired; ask the guest to refresh it")
