"""Rate limits in Redis (DESIGN §7: sign-in, PINs, scans, redemptions).

A window starts at the first attempt and lasts ``window_s`` (SET NX EX, then INCR: Redis 6.2
has no EXPIRE NX), so Retry-After is the key's remaining TTL, exactly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

from server.infra.problems import Problem
from server.infra.redis import RedisGate, RedisUnavailable

__all__ = ["count_failure", "limit", "limit_all", "refuse_if_over", "reset_limit"]


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
        raise _unavailable(what) from None
    if used > per_window:
        raise _too_many(name, what, ttl)


async def reset_limit(gate: RedisGate, name: str, subject: object) -> None:
    """Forget the count (a success that should not keep counting against the subject)."""
    with contextlib.suppress(RedisUnavailable):  # else the window expires on its own
        await gate.run(lambda: gate.client.delete(_key(name, subject)))


def _too_many(name: str, what: str, ttl: int) -> Problem:
    retry = max(ttl, 1)
    return Problem(
        429, f"too-many-{name}", f"too many {what}; try again in {retry} s", retry_after_s=retry
    )


def _unavailable(what: str) -> Problem:
    return Problem(503, "limit-unavailable", f"{what} are briefly unavailable; try again shortly")


async def refuse_if_over(
    gate: RedisGate,
    name: str,
    subject: object,
    per_window: int,
    what: str,
    *,
    when_down: Literal["allow", "refuse"] = "allow",
) -> None:
    """429 ``too-many-<name>`` when ``subject`` has used up ``per_window`` already, without
    counting this request: for limits on failures, counted by :func:`count_failure` once a
    request has failed, so that the right answer is never what uses the limit up."""
    key = _key(name, subject)

    async def read() -> tuple[int, int]:
        async with gate.client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            used, ttl = await pipe.execute()
        return int(used or 0), int(ttl)

    try:
        used, ttl = await gate.run(read)
    except RedisUnavailable:
        if when_down == "allow":
            return
        raise _unavailable(what) from None
    if used >= per_window:
        raise _too_many(name, what, ttl)


async def count_failure(gate: RedisGate, name: str, subject: object, window_s: int) -> int:
    """Count one failure of ``subject`` in a window of ``window_s``; the count so far (0 when
    Redis cannot count: the limits that must hold without Redis refuse up front)."""
    key = _key(name, subject)

    async def count() -> int:
        async with gate.client.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=window_s, nx=True)
            pipe.incr(key)
            _, used = await pipe.execute()
        return int(used)

    try:
        return await gate.run(count)
    except RedisUnavailable:
        return 0


_BUDGETS = (Path(__file__).parent / "lua" / "budgets.lua").read_text()


async def limit_all(
    gate: RedisGate,
    name: str,
    budgets: list[tuple[str, int, str]],
    window_s: int,
) -> None:
    """Count one more ``name`` against every budget ``(subject, per_window, what)``, checked
    in order; 429 ``too-many-<name>`` from the first one used up, and then none is counted.
    One Redis call (lua/budgets.lua); the keys share a hash slot (``{name}``). Without Redis
    it refuses (503): for budgets that cost money, such as text messages."""
    keys = [f"rg:limit:{{{name}}}:{subject}" for subject, _, _ in budgets]
    args = [window_s, *(most for _, most, _ in budgets)]

    async def count() -> list[int]:
        script = gate.client.register_script(_BUDGETS)
        return [int(x) for x in await script(keys=keys, args=args)]

    try:
        refused, ttl = await gate.run(count)
    except RedisUnavailable:
        raise _unavailable(f"{budgets[0][2]}") from None
    if refused:
        raise _too_many(name, budgets[refused - 1][2], ttl)
