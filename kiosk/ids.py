"""Time-ordered ids for Idempotency-Key headers (UUIDv7 layout, RFC 9562).

Python 3.11 has no ``uuid.uuid7``. Keys sort by creation time, so the outbox replays in the
order the counter staff worked, and the server's idempotency table stays index-friendly.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

__all__ = ["uuid7"]

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7; strictly increasing within this process even within one millisecond."""
    global _last_ms, _seq
    with _lock:
        ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if ms <= _last_ms:
            # Same (or an earlier, after a clock step) millisecond: bump the 12-bit counter
            # and borrow the next millisecond when it overflows, so order never goes back.
            _seq += 1
            if _seq > 0xFFF:
                _seq = 0
                _last_ms += 1
            ms = _last_ms
        else:
            _seq = secrets.randbits(8)  # a random start leaves room for bumps
            _last_ms = ms
        rand_b = secrets.randbits(62)
        value = (ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76
        value |= _seq << 64
        value |= 0b10 << 62
        value |= rand_b
        return uuid.UUID(int=value)
