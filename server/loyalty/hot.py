"""Hot balances in Redis (DESIGN §4): the Lua scripts, called like functions.

Every method raises :class:`RedisUnavailable` when Redis does not answer; callers carry on
with PostgreSQL, which is always the last word.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib import resources
from typing import Literal
from uuid import UUID

from server.infra.redis import RedisGate, script_sha
from server.loyalty.model import AccountState
from server.loyalty.repository import Snapshot

__all__ = ["HotWallets", "Status", "wallet_keys"]

Status = Literal["ok", "exists", "insufficient", "miss", "voided", "posted"]
SCRIPTS = ("reserve", "post", "void", "credit", "load", "prune")


def wallet_keys(guest_id: UUID) -> list[str]:
    """The wallet and holds keys of one guest, hash-tagged into one cluster slot."""
    tag = f"rg:{{g:{guest_id}}}"
    return [f"{tag}:wallet", f"{tag}:holds"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class HotWallets:
    def __init__(self, gate: RedisGate, grace_s: float, ttl_s: int = 30 * 86400) -> None:
        self.gate = gate
        self.grace_ms = int(grace_s * 1000)
        self.ttl_s = ttl_s
        folder = resources.files("server.loyalty") / "lua"
        sources = {name: (folder / f"{name}.lua").read_text() for name in SCRIPTS}
        # name -> (SHA1, source): called by SHA over the gate's line, loaded again on NOSCRIPT.
        self._scripts = {name: (script_sha(src), src) for name, src in sources.items()}

    async def _call(self, name: str, guest_id: UUID, *args: str | int) -> tuple[Status, int]:
        sha, source = self._scripts[name]
        line = self.gate.line
        result = await self.gate.run(
            lambda: line.evalsha(sha, source, wallet_keys(guest_id), list(args))
        )
        status, spendable = result
        return status, int(spendable)

    async def reserve(self, guest_id: UUID, transfer_id: UUID, points: int) -> tuple[Status, int]:
        return await self._call(
            "reserve", guest_id, str(transfer_id), points, _now_ms(), self.ttl_s
        )

    async def post(self, guest_id: UUID, transfer_id: UUID, version: int) -> tuple[Status, int]:
        return await self._call("post", guest_id, str(transfer_id), version)

    async def void(self, guest_id: UUID, transfer_id: UUID, version: int = 0) -> tuple[Status, int]:
        return await self._call("void", guest_id, str(transfer_id), version)

    async def credit(
        self, guest_id: UUID, transfer_id: UUID, points: int, version: int
    ) -> tuple[Status, int]:
        """Mirror a committed single-phase transfer; ``points`` is negative for a debit."""
        return await self._call("credit", guest_id, str(transfer_id), points, version, _now_ms())

    async def load(
        self,
        guest_id: UUID,
        snapshot: Snapshot,
        *,
        force: bool = False,
        grace_ms: int | None = None,
        void_first: Sequence[UUID] = (),
    ) -> tuple[Status, int]:
        """Write a PostgreSQL snapshot unless Redis mirrors a newer version (or ``force``).

        Holds Redis reserved less than ``grace_ms`` ago (default: the configured grace) and
        PostgreSQL does not show are kept: checkouts in flight. With 0, Redis is made to match
        PostgreSQL exactly. Holds in ``void_first`` are voided before anything else, even
        when Redis is newer: a refused spend is undone and the wallet reloaded in one call.
        """
        holds: list[str | int] = []
        for hold_id, points in snapshot.holds:
            holds += [str(hold_id), points]
        return await self._call(
            "load",
            guest_id,
            snapshot.state.posted,
            snapshot.state.version,
            _now_ms(),
            self.grace_ms if grace_ms is None else grace_ms,
            self.ttl_s,
            1 if force else 0,
            " ".join(str(hold_id) for hold_id in void_first),
            *holds,
        )

    async def read(self, guest_id: UUID) -> tuple[AccountState, dict[str, str]] | None:
        """The wallet and raw holds as Redis has them (None when not loaded)."""
        wallet_key, holds_key = wallet_keys(guest_id)

        async def both() -> tuple[dict[str, str], dict[str, str]]:
            async with self.gate.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(wallet_key)
                pipe.hgetall(holds_key)
                wallet, holds = await pipe.execute()
            return wallet, holds

        wallet, holds = await self.gate.run(both)
        if not wallet:
            return None
        state = AccountState(
            posted=int(wallet["posted"]),
            pending=int(wallet["pending"]),
            version=int(wallet["version"]),
        )
        return state, holds

    async def balances(self, guest_ids: Sequence[UUID]) -> dict[UUID, tuple[int, int]]:
        """(posted, pending) of each loaded wallet among ``guest_ids``, in one round trip;
        a guest whose wallet is not loaded is left out. Reads no holds."""

        async def read() -> list[list[str | None]]:
            async with self.gate.client.pipeline(transaction=False) as pipe:
                for guest_id in guest_ids:
                    pipe.hmget(wallet_keys(guest_id)[0], "posted", "pending")
                return list(await pipe.execute())

        replies = await self.gate.run(read)
        return {
            guest_id: (int(posted), int(pending))
            for guest_id, (posted, pending) in zip(guest_ids, replies, strict=True)
            if posted is not None and pending is not None
        }

    async def prune(self, guest_ids: Sequence[UUID], older_than_ms: int, above: int) -> int:
        """Drop the markers of resolved transfers made more than ``older_than_ms`` ago (a
        hold's time is its reserve; it resolves within its timeout) from each wallet among
        ``guest_ids`` whose holds hash has more than ``above`` entries; returns how many were
        dropped. The hash keeps a marker per transfer for as long as the wallet stays in
        Redis, and each spend renews its TTL: a regular's grew without end."""

        async def sizes() -> list[int]:
            async with self.gate.client.pipeline(transaction=False) as pipe:
                for guest_id in guest_ids:
                    pipe.hlen(wallet_keys(guest_id)[1])
                return list(await pipe.execute())

        cutoff = _now_ms() - older_than_ms
        dropped = 0
        for guest_id, size in zip(guest_ids, await self.gate.run(sizes), strict=True):
            if size > above:
                dropped += (await self._call("prune", guest_id, cutoff))[1]
        return dropped

    async def preload(self) -> None:
        """Load every script into Redis (at start-up, and when Redis comes back empty), so a
        spend's calls are EVALSHA hits rather than a NOSCRIPT round trip and a reload."""
        line = self.gate.line

        async def load_all() -> None:
            for _sha, source in self._scripts.values():
                await line.call("SCRIPT", "LOAD", source)

        await self.gate.run(load_all)

    async def forget(self, guest_ids: set[UUID]) -> None:
        """Drop wallets so they reload from PostgreSQL on next use."""
        if guest_ids:
            keys = [key for guest_id in guest_ids for key in wallet_keys(guest_id)]
            await self.gate.run(lambda: self.gate.client.delete(*keys))
