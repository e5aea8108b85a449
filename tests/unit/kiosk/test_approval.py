"""Accruals over the barista's limits (403 ``accrual-needs-approval``, issue 21 finding 2):
they wait in the outbox, survive a restart, are approved by a shift lead's PIN under a key
committed before sending (exactly once, even across a crash), or are cancelled."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk.api import ApiProblem, Offline
from kiosk.config import KioskConfig
from kiosk.outbox import ApprovalNeed, Outbox, OutboxRelay
from kiosk.presenters import approval_view, approvers_phrase, banner_view
from kiosk.session import CurrentGuest, KioskSession
from shared import qr
from tests.unit.kiosk.conftest import LOCATION_ID, FakeApi, RecordingListener

LEAD = "lead@cafe.test"
BARISTA = "barista@cafe.test"
MANAGER = "manager@cafe.test"
BIG_MINOR = 600_00  # 600 points at the fake's 1 point per 1.00: over the barista's 500


def make_session(api: FakeApi, outbox: Outbox, tmp_path: Path, listener: Any = None) -> Any:
    config = KioskConfig(
        data_dir=tmp_path,
        server_url="http://fake",
        location_id=str(LOCATION_ID),
        location_name="Canal St",
        currency="EUR",
        device_id="0190f0a0-0000-7000-8000-0000000000dd",
        device_secret="device-secret-0123456789",
    )
    return KioskSession(api, outbox, config, listener=listener, save_config=lambda _c: None)  # type: ignore[arg-type]


@pytest.fixture
def api(fake_api: FakeApi) -> FakeApi:
    fake_api.max_points = {"a": 500, f"token-{LEAD}": 2000}
    fake_api.staff = {LEAD: ("2468", "shift_lead"), BARISTA: ("1357", "barista")}
    return fake_api


@pytest.fixture
def kiosk(api: FakeApi, outbox: Outbox, tmp_path: Path, listener: RecordingListener) -> Any:
    return make_session(api, outbox, tmp_path, listener)


@pytest.fixture
def guest_code(api: FakeApi, card_factory: Any) -> Iterator[str]:
    code = qr.generate("ABCDEFGHIJKLMNOP", b"0123456789abcdefghij")
    api.cards[code] = card_factory(points=420)
    yield code


async def refused_entry(kiosk: KioskSession, code: str, amount_minor: int = BIG_MINOR) -> str:
    """Scan the guest and accrue over the barista's limit; returns the waiting entry's key."""
    assert isinstance(await kiosk.scan(code), CurrentGuest)
    notice = await kiosk.accrue(amount_minor)
    assert notice.tone == "warning", notice
    [entry] = kiosk.outbox.entries("needs_approval")
    return entry.key


async def test_a_refused_accrual_waits_with_a_clear_message_and_survives_a_restart(
    kiosk: KioskSession, api: FakeApi, tmp_path: Path, guest_code: str
) -> None:
    assert isinstance(await kiosk.scan(guest_code), CurrentGuest)
    notice = await kiosk.accrue(BIG_MINOR)
    assert notice.title == "A shift lead or manager must approve 600 points"
    assert "Approve" in notice.detail
    [entry] = kiosk.outbox.entries("needs_approval")
    assert entry.approval == ApprovalNeed(
        points=600,
        limit="max_points",
        approver_roles=["shift_lead", "manager", "admin"],
        detail="over the limit max_points",
    )
    assert kiosk.outbox.counts().rejected == 0
    assert "1 needs approval" in kiosk.status().banner.text
    [view] = kiosk.approvals(kiosk.current.card.guest.id)  # type: ignore[union-attr]
    assert view.key == entry.key and view.title == notice.title
    assert view.detail.startswith("€600.00 paid")

    # Later drains leave it alone: only an approver sends it.
    await kiosk.drain_outbox()
    assert len(api.accrue_calls) == 1

    kiosk.outbox.close()  # the tablet restarts
    reopened = Outbox(tmp_path / "outbox.sqlite3")
    [again] = reopened.entries("needs_approval")
    assert again.key == entry.key and again.approval == entry.approval
    assert again.accrual == entry.accrual
    reopened.close()


async def test_a_shift_leads_pin_sends_it_once_with_their_token_and_a_new_key(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    key = await refused_entry(kiosk, guest_code)
    outbox = kiosk.outbox
    on_disk: list[str | None] = []

    def check_disk(sent_key: str) -> None:
        # A second connection sees only what is committed: what a crash would leave.
        with sqlite3.connect(outbox.path) as other:
            (stored,) = other.execute(
                "SELECT approval_key FROM outbox WHERE key = ?", (key,)
            ).fetchone()
        on_disk.append(stored)

    api.before_accrue = check_disk
    notice = await kiosk.approve_with_pin(key, LEAD, "2468")

    assert notice.tone == "success" and notice.title == "+600 points", notice
    assert f"approved by {LEAD}" in notice.detail
    approval_key = api.accrue_calls[-1][2]
    assert approval_key != key and on_disk == [approval_key]
    assert api.accrue_tokens == [None, f"token-{LEAD}"]
    done = outbox.get(key)
    assert done is not None and done.state == "delivered" and done.approved_by == LEAD
    assert done.approval_key == approval_key and done.transfer is not None
    # The barista is still signed in; the lead's session was ended after this one accrual.
    assert api.tokens is not None and api.tokens.access_token == "a"
    assert api.ended_sessions == [f"token-{LEAD}"]
    # The guest card shows the new balance.
    assert kiosk.current is not None and kiosk.current.view is not None
    assert kiosk.current.view.points_available == done.transfer.points_available
    assert kiosk.approvals() == []
    # Approving again sends nothing.
    again = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert again.title == "Nothing waiting" and len(api.accrue_calls) == 2


async def test_a_wrong_pin_or_a_barista_pin_leaves_it_waiting(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    key = await refused_entry(kiosk, guest_code)

    wrong = await kiosk.approve_with_pin(key, LEAD, "0000")
    assert wrong.tone == "error" and wrong.title == "Wrong email or PIN"
    assert "still waiting" in wrong.detail

    barista = await kiosk.approve_with_pin(key, BARISTA, "1357")
    assert barista.title == "A barista cannot approve this"
    assert barista.detail.startswith("A shift lead or manager must.")
    assert api.ended_sessions == [f"token-{BARISTA}"]  # signed in, not used, ended

    assert len(api.accrue_calls) == 1  # only the barista's refused attempt
    assert kiosk.outbox.get(key).state == "needs_approval"  # type: ignore[union-attr]
    assert api.tokens is not None and api.tokens.access_token == "a"


async def test_a_crash_between_minting_and_sending_resends_the_same_key(
    kiosk: KioskSession, api: FakeApi, tmp_path: Path, guest_code: str
) -> None:
    key = await refused_entry(kiosk, guest_code)
    minted = kiosk.outbox.approval_key(key)  # committed, then the tablet dies before sending
    kiosk.outbox.close()

    reopened = Outbox(tmp_path / "outbox.sqlite3")
    restarted = make_session(api, reopened, tmp_path)
    notice = await restarted.approve_with_pin(key, LEAD, "2468")
    assert notice.tone == "success", notice
    assert api.accrue_calls[-1][2] == minted
    reopened.close()


async def test_a_lost_answer_to_the_approval_is_resent_under_the_same_key_and_credits_once(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    key = await refused_entry(kiosk, guest_code)
    api.lose_reply = True  # the server credits; the answer never arrives
    lost = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert lost.title == "Not sent — server unreachable"
    assert kiosk.outbox.get(key).state == "needs_approval"  # type: ignore[union-attr]

    again = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert again.tone == "success", again
    first, second = api.accrue_calls[-2][2], api.accrue_calls[-1][2]
    assert first == second != key
    guest_id = api.accrue_calls[-1][0]
    assert api.balances[guest_id] == 600  # credited once


async def test_over_the_approvers_own_limit_it_waits_for_a_manager(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    key = await refused_entry(kiosk, guest_code)
    over_hourly = {"limit": "per_staff_per_hour", "approver_roles": ["manager", "admin"],
                   "points": 600}  # fmt: skip

    def lead_is_over_their_hourly_limit(_key: str) -> None:
        api.fail_next = [ApiProblem(403, "accrual-needs-approval", "over", over_hourly)]

    api.before_accrue = lead_is_over_their_hourly_limit
    notice = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert notice.title == "A manager or admin must approve 600 points"
    assert notice.detail.startswith("You have made as many accruals this hour")
    entry = kiosk.outbox.get(key)
    assert entry is not None and entry.state == "needs_approval"
    assert entry.approval is not None and entry.approval.approver_roles == ["manager", "admin"]
    # The shift lead no longer qualifies, so their PIN is refused before anything is sent.
    calls = len(api.accrue_calls)
    refused = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert refused.title == "A shift lead cannot approve this" and len(api.accrue_calls) == calls


async def test_cancel_drops_a_waiting_accrual_with_its_reason(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    key = await refused_entry(kiosk, guest_code)
    notice = await kiosk.cancel_approval(key)
    assert notice.title == "Accrual cancelled" and "€600.00" in notice.detail
    entry = kiosk.outbox.get(key)
    assert entry is not None and entry.state == "rejected"
    assert "cancelled" in (entry.last_error or "")
    assert kiosk.outbox.counts().needs_approval == 0
    assert (await kiosk.cancel_approval(key)).title == "Nothing waiting"
    assert (await kiosk.approve_with_pin(key, LEAD, "2468")).title == "Nothing waiting"
    assert api.pin_calls == []


async def test_a_replayed_offline_accrual_over_the_limit_waits_too(
    kiosk: KioskSession, api: FakeApi, listener: RecordingListener, guest_code: str
) -> None:
    api.offline = True
    assert isinstance(await kiosk.scan(guest_code), CurrentGuest)
    saved = await kiosk.accrue(BIG_MINOR)
    assert saved.title.startswith("Saved")
    api.offline = False
    report = await kiosk.drain_outbox()
    [(entry, need)] = report.needs_approval
    assert need.points == 600 and listener.drains == [report]
    assert kiosk.outbox.get(entry.key).state == "needs_approval"  # type: ignore[union-attr]


async def test_an_unpaired_tablet_asks_for_the_password_instead(
    fake_api: FakeApi, outbox: Outbox, tmp_path: Path
) -> None:
    config = KioskConfig(data_dir=tmp_path, server_url="http://fake", location_id=str(LOCATION_ID))
    kiosk = KioskSession(fake_api, outbox, config, save_config=lambda _c: None)  # type: ignore[arg-type]
    notice = await kiosk.approve_with_pin("any", LEAD, "2468")
    assert notice.title == "Tablet not paired" and fake_api.pin_calls == []


async def test_an_outbox_file_from_before_approvals_opens_and_keeps_its_entries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(
            """CREATE TABLE outbox (key TEXT PRIMARY KEY, kind TEXT NOT NULL, guest_id TEXT,
            code TEXT, body TEXT NOT NULL, scanned_at TEXT, created_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT, response TEXT, updated_at TEXT NOT NULL);"""
        )
        old.execute(
            "INSERT INTO outbox (key, kind, guest_id, body, created_at, updated_at)"
            " VALUES ('k1', 'accrual', 'g', ?, '2025-03-04T08:30:00+00:00',"
            " '2025-03-04T08:30:00+00:00')",
            (
                json.dumps(
                    {
                        "amount_paid_minor": 450,
                        "location_id": str(LOCATION_ID),
                        "receipt_ref": "R-1",
                    }
                ),
            ),
        )
    box = Outbox(path)
    [entry] = box.entries("pending")
    assert entry.key == "k1" and entry.approval is None and entry.approval_key is None
    box.close()


async def test_relay_refuses_to_send_an_entry_that_is_not_waiting(
    outbox: Outbox, api: FakeApi, tmp_path: Path
) -> None:
    with pytest.raises(LookupError):
        await OutboxRelay(outbox, api).send_approved("missing", "token", LEAD)
    with pytest.raises(LookupError):
        outbox.approval_key("missing")


def test_approval_wording() -> None:
    assert approvers_phrase(["shift_lead", "manager", "admin"]) == "A shift lead or manager"
    assert approvers_phrase(["manager", "admin"]) == "A manager or admin"
    assert approvers_phrase(["admin"]) == "An admin"
    assert approvers_phrase([]) == "Someone senior"
    banner = banner_view("online", 0, 0, needs_approval=2)
    assert banner.text == "Online · 2 need approval" and banner.tone == "warning"


def test_approval_view_says_points_limit_and_who(tmp_path: Path) -> None:
    from tests.unit.kiosk.test_outbox import GUEST, accrual

    box = Outbox(tmp_path / "o.sqlite3")
    entry = box.add_accrual(accrual(12_000), guest_id=GUEST)
    need = ApprovalNeed(points=600, limit="per_guest_per_day", approver_roles=["shift_lead"])
    box.mark_needs_approval(entry.key, need)
    stored = box.get(entry.key)
    assert stored is not None
    view = approval_view(stored, "EUR")
    assert view.title == "A shift lead must approve 600 points"
    assert view.detail.startswith("€120.00 paid · This guest has had as many accruals today")
    box.close()


async def test_a_slowed_down_tablet_says_to_wait_and_keeps_the_accrual(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    """Wrong PINs slow the tablet down (server/staff/throttle.py): the server's wait is shown."""
    key = await refused_entry(kiosk, guest_code)
    api.fail_next = [ApiProblem(429, "sign-in-slowed", "too many failed sign-ins; wait 4 s")]
    notice = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert notice.title == "Too many wrong attempts on this tablet"
    assert notice.detail == "too many failed sign-ins; wait 4 s. The accrual is still waiting."
    assert kiosk.outbox.get(key).state == "needs_approval"  # type: ignore[union-attr]
    api.fail_next = [Offline("down")]
    offline = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert offline.title == "Server unreachable" and len(api.accrue_calls) == 1


async def test_a_receipt_already_credited_is_said_plainly_and_the_entry_is_settled(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    key = await refused_entry(kiosk, guest_code)

    def receipt_taken(_key: str) -> None:
        api.fail_next = [ApiProblem(409, "receipt-already-accrued", "receipt 'R' was accrued")]

    api.before_accrue = receipt_taken
    notice = await kiosk.approve_with_pin(key, LEAD, "2468")
    assert notice.title == "Receipt already credited" and notice.tone == "error"
    entry = kiosk.outbox.get(key)
    assert entry is not None and entry.state == "rejected"
    assert "receipt-already-accrued" in (entry.last_error or "") and LEAD in (
        entry.last_error or ""
    )


async def test_a_manager_approves_with_password_and_authenticator_code(
    kiosk: KioskSession, api: FakeApi, guest_code: str
) -> None:
    """Managers cannot use a PIN (the server asks for a second factor): password and TOTP."""
    api.staff[MANAGER] = ("9999", "manager")
    key = await refused_entry(kiosk, guest_code)
    api.fail_next = [ApiProblem(403, "second-factor-required", "not a PIN")]
    by_pin = await kiosk.approve_with_pin(key, MANAGER, "9999")
    assert by_pin.title == "This role approves with a password"
    no_code = await kiosk.approve_with_password(key, MANAGER, "9999-password")
    assert no_code.title == "Wrong authenticator code" and len(api.accrue_calls) == 1
    done = await kiosk.approve_with_password(key, MANAGER, "9999-password", "123456")
    assert done.tone == "success" and f"approved by {MANAGER}" in done.detail
    assert api.accrue_tokens[-1] == f"token-{MANAGER}"
    assert api.ended_sessions == [f"token-{MANAGER}"]
