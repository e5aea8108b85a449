"""Each Lua script against the real Redis: success, replay, refusals, and ordering rules."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from server.loyalty.hot import HotWallets, wallet_keys
from server.loyalty.model import AccountState
from server.loyalty.repository import Snapshot
from tests.conftest import Client


@pytest.fixture
def hot(client: Client) -> HotWallets:
    return client.app.state.services.loyalty.hot  # type: ignore[no-any-return]


async def loaded(hot: HotWallets, posted: int = 500) -> uuid.UUID:
    guest_id = uuid.uuid4()
    snapshot = Snapshot(account_id=uuid.uuid4(), state=AccountState(posted, 0, 1), holds=[])
    assert (await hot.load(guest_id, snapshot))[0] == "ok"
    return guest_id


async def test_reserve(hot: HotWallets) -> None:
    guest, hold = await loaded(hot), uuid.uuid4()
    assert await hot.reserve(guest, hold, 200) == ("ok", 300)
    assert await hot.reserve(guest, hold, 200) == ("exists", 300)
    assert await hot.reserve(guest, uuid.uuid4(), 301) == ("insufficient", 300)
    assert await hot.reserve(uuid.uuid4(), uuid.uuid4(), 1) == ("miss", 0)


async def test_post(hot: HotWallets) -> None:
    guest, hold = await loaded(hot), uuid.uuid4()
    await hot.reserve(guest, hold, 200)
    assert await hot.post(guest, hold, 2) == ("ok", 300)
    assert await hot.post(guest, hold, 2) == ("exists", 300)
    state, _ = await hot.read(guest) or (None, None)
    assert state == AccountState(posted=300, pending=0, version=2)
    assert await hot.void(guest, hold) == ("posted", 300)  # void after post is refused
    assert (await hot.post(guest, uuid.uuid4(), 3))[0] == "miss"


async def test_void(hot: HotWallets) -> None:
    guest, hold = await loaded(hot), uuid.uuid4()
    await hot.reserve(guest, hold, 200)
    assert await hot.void(guest, hold, 2) == ("ok", 500)
    assert await hot.void(guest, hold, 2) == ("exists", 500)
    assert await hot.post(guest, hold, 3) == ("voided", 500)  # post after void is refused
    assert await hot.reserve(guest, uuid.uuid4(), 500) == ("ok", 0)


async def test_credit(hot: HotWallets) -> None:
    guest, transfer = await loaded(hot), uuid.uuid4()
    assert await hot.credit(guest, transfer, 50, 2) == ("ok", 550)
    assert await hot.credit(guest, transfer, 50, 2) == ("exists", 550)
    assert await hot.credit(guest, uuid.uuid4(), -600, 3) == (
        "ok",
        -50,
    )  # a clawback may go negative
    assert await hot.reserve(guest, uuid.uuid4(), 1) == ("insufficient", -50)
    assert (await hot.credit(uuid.uuid4(), uuid.uuid4(), 5, 1))[0] == "miss"


async def test_load_keeps_in_flight_holds_and_only_moves_forward(hot: HotWallets) -> None:
    guest = await loaded(hot, posted=500)
    in_flight = uuid.uuid4()
    await hot.reserve(guest, in_flight, 100)
    committed = uuid.uuid4()
    newer = Snapshot(uuid.uuid4(), AccountState(500, 50, 5), holds=[(committed, 50)])
    assert await hot.load(guest, newer) == ("ok", 350)  # 500 - 50 (PostgreSQL) - 100 (in flight)
    older = Snapshot(uuid.uuid4(), AccountState(900, 0, 4), holds=[])
    assert (await hot.load(guest, older))[0] == "exists"
    assert await hot.load(guest, newer, force=True, grace_ms=0) == ("ok", 450)  # orphan dropped
    _, holds = await hot.read(guest) or (None, {})
    assert set(holds) == {str(committed)}


async def test_keys_share_one_cluster_slot() -> None:
    from server.loyalty.hot import wallet_keys

    wallet, holds = wallet_keys(uuid.uuid4())
    tag = wallet[wallet.index("{") : wallet.index("}") + 1]
    assert tag in holds and tag.startswith("{g:")


async def test_scripts_survive_a_script_flush(hot: HotWallets, client: Client) -> Any:
    guest = await loaded(hot)
    await client.app.state.services.gate.client.script_flush()
    assert (await hot.reserve(guest, uuid.uuid4(), 1))[0] == "ok"


async def test_load_can_void_a_refused_hold_in_the_same_call(hot: HotWallets) -> None:
    guest = await loaded(hot, posted=500)
    refused, in_flight = uuid.uuid4(), uuid.uuid4()
    await hot.reserve(guest, refused, 100)
    await hot.reserve(guest, in_flight, 50)
    # Redis already mirrors this version: nothing is rewritten, but the refused hold is voided.
    same_version = Snapshot(uuid.uuid4(), AccountState(500, 0, 1), holds=[])
    assert await hot.load(guest, same_version, void_first=[refused]) == ("exists", 450)
    _, holds = await hot.read(guest) or (None, {})
    assert holds[str(refused)].split("|")[1] == "V"
    assert holds[str(in_flight)].split("|")[1] == "p"
    assert await hot.post(guest, refused, 2) == ("voided", 450)


async def test_prune_drops_old_markers_of_resolved_transfers_only(hot: HotWallets) -> None:
    """A regular's holds hash kept a marker per transfer for as long as the wallet stayed in
    Redis; each spend renews its TTL, so it grew without end."""
    guest, young, open_hold = await loaded(hot), uuid.uuid4(), uuid.uuid4()
    holds_key = wallet_keys(guest)[1]
    client = hot.gate.client
    old = {str(uuid.uuid4()): f"{n}|{'PVC'[n % 3]}|1000" for n in range(5_000)}
    await client.hset(holds_key, mapping=old)
    await hot.reserve(guest, open_hold, 100)
    await client.hset(holds_key, str(open_hold), "100|p|1000")  # open, and as old as the rest
    await hot.reserve(guest, young, 50)
    await hot.void(guest, young, 2)
    before = await hot.read(guest)
    assert before is not None and len(before[1]) == 5_002

    assert await hot.prune([guest], older_than_ms=86_400_000, above=64) == 5_000
    after = await hot.read(guest)
    assert after is not None and after[0] == before[0]
    assert sorted(after[1]) == sorted([str(open_hold), str(young)])
    # A late mirror of a pruned transfer finds nothing: the service reloads from the ledger.
    assert (await hot.post(guest, uuid.UUID(next(iter(old))), 3))[0] == "miss"
    assert await hot.post(guest, open_hold, 3) == ("ok", 400)


async def test_prune_leaves_small_wallets_alone(hot: HotWallets) -> None:
    guest = await loaded(hot)
    old = {str(uuid.uuid4()): "5|P|1000" for _ in range(64)}
    await hot.gate.client.hset(wallet_keys(guest)[1], mapping=old)
    assert await hot.prune([guest, uuid.uuid4()], older_than_ms=86_400_000, above=64) == 0
    after = await hot.read(guest)
    assert after is not None and len(after[1]) == 64
