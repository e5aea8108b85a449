"""A till's request signature (DESIGN §10), for clients: load tests, tools, a till SDK.

``X-Regulars-Key: <key_id>`` and ``X-Regulars-Signature: t=<unix s>,v1=<hex>``, the hex being
HMAC-SHA256 under the key's secret (its UTF-8 bytes) of ``"<t>." + the raw body``. Sign the
exact bytes sent, and sign afresh for every send: the server refuses a signature older than
five minutes or one it has seen before, so a retry or a replay of the same body needs a new
signature (the body, and so the receipt's idempotency, stays the same).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["KEY_HEADER", "SIGNATURE_HEADER", "Signer", "signature", "signed_headers"]

KEY_HEADER = "X-Regulars-Key"
SIGNATURE_HEADER = "X-Regulars-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Regulars-Signature`` value for ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def signed_headers(
    key_id: str, secret: str, body: bytes, now_s: float | None = None
) -> dict[str, str]:
    """Headers for one signed request with a JSON body (``now_s``: for tests)."""
    timestamp = int(time.time() if now_s is None else now_s)
    return {
        "Content-Type": "application/json",
        KEY_HEADER: key_id,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


class Signer:
    """Signs every send of a till afresh. The same body sent twice within one second would
    carry the same signature, which the server refuses as a replay; so a body signed before
    at this second waits for the next one (a retry, or a till resending a receipt)."""

    def __init__(
        self,
        key_id: str,
        secret: str,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        remembered: int = 1024,
    ) -> None:
        self.key_id = key_id
        self.secret = secret
        self._clock = clock
        self._sleep = sleep
        self._remembered = remembered
        self._last: OrderedDict[bytes, int] = OrderedDict()

    def headers(self, body: bytes) -> dict[str, str]:
        digest = hashlib.sha256(body).digest()
        timestamp = int(self._clock())
        last = self._last.pop(digest, None)
        if last is not None and timestamp <= last:
            self._sleep(max(0.0, last + 1 - self._clock()))
            timestamp = last + 1
        self._last[digest] = timestamp
        while len(self._last) > self._remembered:
            self._last.popitem(last=False)
        return signed_headers(self.key_id, self.secret, body, now_s=timestamp)
