"""Rate limits in Redis (DESIGN §7: sign-in, PINs, scans, redemptions).

A window starts at the first attempt and lasts ``window_s`` (SET NX EX, then INCR: Redis 6.2
has no EXPIRE NX), so Retry-After is the key's remaining TTL, exactly.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from server.infra.problems import Problem
from server.infra.redis import RedisGate, RedisUnavailable

__all__ = ["limit", "reset_limit"]


def _key(name: str, subject: object) -> str:
    return f"rg:limit:{name}:{subject}"


async def limit(
    gate: RedisGate,
    name: str,
    subject: object,
    per_window: int,
    window_s: int,
    what: str,
    *,
    when_down: Literal["allow", "refuse"] = "allow",
) -> None:
    """Count one more ``name`` for ``subject``; 429 ``too-many-<name>`` past ``per_window``.

    Without Redis, ``allow`` lets the request through (the counter keeps serving guests; the
    limit comes back with Redis) and ``refuse`` answers 503 (for guessable secrets such as a
    PIN, unlimited guessing is not an option).
    """
    key = _key(name, subject)

    async def count() -> tuple[int, int]:
        async with gate.client.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=window_s, nx=True)
            pipe.incr(key)
            pipe.ttl(key)
            _, used, ttl = await pipe.execute()
        return int(used), int(ttl)

    try:
        used, ttl = await gate.run(count)
    except RedisUnavailable:
        if when_down == "allow":
            return
        raise Problem(
            503, "limit-unavailable", f"{what} are briefly unavailable; try again shortly"
        ) from None
    if used > per_window:
        retry = max(ttl, 1)
        raise Problem(
            429, f"too-many-{name}", f"too many {what}; try again in {retry} s", retry_after_s=retry
        )


async def reset_limit(gate: RedisGate, name: str, subject: object) -> None:
    """Forget the count (a success that should not keep counting against the subject)."""
    with contextlib.suppress(RedisUnavailable):  # else the window expires on its own
        await gate.run(lambda: gate.client.delete(_key(name, subject)))
