"""The outbox promises: key on disk before send, exactly one effect, survives restarts."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kiosk.api import ApiProblem, Offline
from kiosk.ids import uuid7
from kiosk.outbox import Outbox, OutboxRelay
from shared import contract

LOCATION = uuid.UUID("0190f0a0-0000-7000-8000-000000000001")
GUEST = uuid.UUID("0190f0a0-0000-7000-8000-0000000000aa")
SCANNED_AT = datetime(2025, 3, 4, 8, 30, tzinfo=UTC)


def accrual(amount_minor: int = 450, ref: str = "R-1") -> contract.AccrualIn:
    return contract.AccrualIn(
        amount_paid_minor=amount_minor,
        location_id=LOCATION,
        receipt_ref=ref,
        scanned_at=SCANNED_AT,
    )


async def test_key_is_on_disk_before_the_request_leaves(outbox: Outbox, fake_api: Any) -> None:
    seen: list[tuple[str, str]] = []

    def check_disk(key: str) -> None:
        # A separate connection sees only what was committed: what a crash would leave.
        with sqlite3.connect(outbox.path) as other:
            row = other.execute("SELECT key, state FROM outbox WHERE key = ?", (key,)).fetchone()
        assert row is not None, "the key must be committed before sending"
        seen.append(row)

    fake_api.before_accrue = check_disk
    entry = outbox.add_accrual(accrual(), guest_id=GUEST)
    await OutboxRelay(outbox, fake_api).drain()
    assert seen == [(entry.key, "pending")]
    assert fake_api.accrue_calls[0][2] == entry.key


async def test_lost_reply_is_replayed_with_the_same_key_and_credits_once(
    outbox: Outbox, fake_api: Any
) -> None:
    relay = OutboxRelay(outbox, fake_api)
    entry = outbox.add_accrual(accrual(1000), guest_id=GUEST)
    fake_api.lose_reply = True  # the server credits, but the answer never arrives

    first = await relay.drain()
    assert first.stopped == "offline"
    assert outbox.get(entry.key).state == "pending"  # type: ignore[union-attr]

    second = await relay.drain()
    assert [e.key for e, _ in second.delivered] == [entry.key]
    assert [call[2] for call in fake_api.accrue_calls] == [entry.key, entry.key]
    assert len(fake_api.effects) == 1
    assert fake_api.balances[str(GUEST)] == 10  # credited once, not twice

    third = await relay.drain()
    assert not third.delivered and len(fake_api.accrue_calls) == 2  # never sent again


async def test_concurrent_drains_send_each_entry_once(outbox: Outbox, fake_api: Any) -> None:
    relay = OutboxRelay(outbox, fake_api)
    keys = {outbox.add_accrual(accrual(ref=f"R-{i}"), guest_id=GUEST).key for i in range(3)}
    await asyncio.gather(relay.drain(), relay.drain(), relay.drain(only_key=min(keys)))
    assert sorted(call[2] for call in fake_api.accrue_calls) == sorted(keys)
    assert outbox.counts().delivered == 3


async def test_pending_entries_survive_a_restart(tmp_path: Path, fake_api: Any) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    fake_api.offline = True
    entry = box.add_accrual(accrual(725, "R-77"), guest_id=GUEST)
    report = await OutboxRelay(box, fake_api).drain()
    assert report.stopped == "offline"
    box.close()  # the tablet reboots

    reopened = Outbox(path)
    [pending] = reopened.entries("pending")
    assert pending.key == entry.key
    assert pending.accrual == entry.accrual
    assert pending.attempts == 1

    fake_api.offline = False
    report = await OutboxRelay(reopened, fake_api).drain()
    assert [e.key for e, _ in report.delivered] == [entry.key]
    assert reopened.counts().pending == 0
    reopened.close()


async def test_replay_order_is_creation_order(outbox: Outbox, fake_api: Any) -> None:
    keys = [outbox.add_accrual(accrual(ref=f"R-{i}"), guest_id=GUEST).key for i in range(5)]
    await OutboxRelay(outbox, fake_api).drain()
    assert [call[2] for call in fake_api.accrue_calls] == keys


async def test_code_scanned_offline_is_resolved_with_its_scan_time(
    outbox: Outbox, fake_api: Any, card_factory: Any
) -> None:
    code = "RG1:ABCDEFGHIJKLMNOP:29012345:ABCDEFGHIJ"
    fake_api.cards[code] = card_factory(guest_id=GUEST)
    entry = outbox.add_accrual(accrual(), code=code)
    assert entry.guest_id is None

    report = await OutboxRelay(outbox, fake_api).drain()
    assert fake_api.scan_calls == [(code, SCANNED_AT)]  # late verification uses scan time
    assert fake_api.accrue_calls[0][0] == str(GUEST)
    assert fake_api.accrue_calls[0][1].scanned_at == SCANNED_AT
    assert report.delivered and outbox.get(entry.key).guest_id == str(GUEST)  # type: ignore[union-attr]


async def test_refused_entry_is_kept_with_its_reason_and_not_retried(
    outbox: Outbox, fake_api: Any
) -> None:
    relay = OutboxRelay(outbox, fake_api)
    entry = outbox.add_accrual(accrual(), code="RG1:ABCDEFGHIJKLMNOP:1:ABCDEFGHIJ")
    fake_api.fail_next = [ApiProblem(422, "qr-expired", "code expired at scan time")]
    report = await relay.drain()
    assert [p.slug for _, p in report.rejected] == ["qr-expired"]
    stored = outbox.get(entry.key)
    assert stored is not None and stored.state == "rejected"
    assert "qr-expired" in (stored.last_error or "")
    await relay.drain()
    assert len(fake_api.scan_calls) == 1


async def test_rate_limit_and_sign_out_keep_the_entry_pending(
    outbox: Outbox, fake_api: Any
) -> None:
    relay = OutboxRelay(outbox, fake_api)
    entry = outbox.add_accrual(accrual(), guest_id=GUEST)
    fake_api.fail_next = [
        ApiProblem(429, "rate-limited", "slow down"),
        ApiProblem(401, "invalid-token", "expired"),
        Offline("down"),
    ]
    assert (await relay.drain()).stopped == "server-busy"
    assert (await relay.drain()).stopped == "signed-out"
    assert (await relay.drain()).stopped == "offline"
    assert outbox.get(entry.key).state == "pending"  # type: ignore[union-attr]
    assert (await relay.drain()).delivered
    assert len(fake_api.effects) == 1


def test_add_refuses_an_entry_without_guest_or_code(outbox: Outbox) -> None:
    try:
        outbox.add_accrual(accrual())
    except ValueError:
        return
    raise AssertionError("expected ValueError")


def test_keys_are_uuid7_and_strictly_increasing() -> None:
    keys = [uuid7(now_ms=1_700_000_000_000) for _ in range(50)] + [uuid7() for _ in range(50)]
    assert all(k.version == 7 and k.variant == uuid.RFC_4122 for k in keys)
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
