"""Fixed-window rate limits in Redis (DESIGN §7: sign-in, codes, scans, redemptions)."""

from __future__ import annotations

import time

from server.infra.problems import Problem
from server.infra.redis import RedisGate, RedisUnavailable

__all__ = ["limit"]


async def limit(
    gate: RedisGate, name: str, subject: object, per_window: int, window_s: int, what: str
) -> None:
    """Count one more ``name`` for ``subject`` in the current window; 429 past ``per_window``.

    Without Redis the limit is not enforced: the counter keeps serving guests, and the limit
    comes back with Redis.
    """
    window = int(time.time() // window_s)
    key = f"rg:limit:{name}:{subject}:{window}"

    async def count() -> int:
        async with gate.client.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, window_s)
            used, _ = await pipe.execute()
        return int(used)

    try:
        used = await gate.run(count)
    except RedisUnavailable:
        return
    if used > per_window:
        retry = max(window_s - int(time.time()) % window_s, 1)
        raise Problem(
            429, f"too-many-{name}", f"too many {what}; try again in {retry} s", retry_after_s=retry
        )
