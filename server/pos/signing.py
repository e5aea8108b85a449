"""The till's request signature (DESIGN §10), as pure functions.

``X-Regulars-Key: <key_id>`` and ``X-Regulars-Signature: t=<unix s>,v1=<hex>`` where the hex is
HMAC-SHA256 under the key's secret (its UTF-8 bytes) of ``"<t>." + raw body``. Several ``v1``
values may be sent (a till mid-rotation); one matching is enough. The MAC can be computed
while the body streams in (:class:`BodyMac`), so a large batch is never held whole. Clients
sign with :mod:`shared.pos_signing`; the unit tests check that both agree.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

__all__ = ["BodyMac", "SignatureHeader", "parse_signature"]

MAX_SIGNATURES = 4


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]


def parse_signature(header: str | None) -> SignatureHeader | None:
    """The parts of an ``X-Regulars-Signature`` header; None when it is missing or malformed."""
    if not header or len(header) > 1024:
        return None
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and len(value) == 64:
            try:
                bytes.fromhex(value)
            except ValueError:
                return None
            signatures.append(value.lower())
    if timestamp is None or not signatures or len(signatures) > MAX_SIGNATURES:
        return None
    return SignatureHeader(timestamp, tuple(signatures))


class BodyMac:
    """HMAC-SHA256 over ``"<t>."`` and the body, fed as the body arrives."""

    def __init__(self, secret: str, timestamp: int) -> None:
        self._mac = hmac.new(secret.encode(), f"{timestamp}.".encode(), hashlib.sha256)

    def update(self, chunk: bytes) -> None:
        self._mac.update(chunk)

    def hexdigest(self) -> str:
        return self._mac.hexdigest()

    def matches(self, header: SignatureHeader) -> bool:
        """Whether any of the header's signatures is this MAC (compared in constant time)."""
        ours = self.hexdigest()
        found = False
        for theirs in header.signatures:
            found |= hmac.compare_digest(ours, theirs)
        return found
