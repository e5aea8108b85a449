"""Each Lua script against the real Redis: success, replay, refusals, and ordering rules."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from server.loyalty.hot import HotWallets
from server.loyalty.repository import AccountState, Snapshot
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
