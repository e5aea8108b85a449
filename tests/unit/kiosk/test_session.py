"""The session turns every server or network outcome into a view-model or a Notice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kiosk.api import ApiProblem, Offline
from kiosk.live import Backoff, LiveEvent, parse_event
from kiosk.presenters import Notice
from kiosk.session import CurrentGuest, KioskSession, RedemptionHold, normalise_code
from shared import qr

SECRET = b"0123456789abcdefghij"
PUBLIC_ID = "ABCDEFGHIJKLMNOP"


def fresh_code() -> str:
    return qr.generate(PUBLIC_ID, SECRET)


async def test_scan_opens_the_guest_card(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.cards[code] = card_factory()
    result = await session.scan("  " + code.lower() + "\n")  # wedge noise, lower case
    assert isinstance(result, CurrentGuest) and result.view is not None
    assert result.view.name == "Ada L."
    assert fake_api.scan_calls[0][0] == code


@pytest.mark.parametrize(
    ("slug", "title"),
    [
        ("qr-expired", "Code expired"),
        ("qr-forged", "Code not valid"),
        ("qr-other-brand", "Code from another brand"),
        ("guest-not-found", "No guest found"),
        ("malformed-code", "Not a guest code"),
    ],
)
async def test_bad_codes_become_messages_not_crashes(
    session: KioskSession, fake_api: Any, slug: str, title: str
) -> None:
    fake_api.fail_next = [ApiProblem(422, slug, "server detail")]
    result = await session.scan("4711 0815")
    assert isinstance(result, Notice) and result.title == title


@pytest.mark.parametrize("raw", ["", "   ", "\x00\x1b", "x" * 201])
async def test_garbage_input_is_refused_locally(
    session: KioskSession, fake_api: Any, raw: str
) -> None:
    result = await session.scan(raw)
    assert isinstance(result, Notice) and result.tone == "error"
    assert fake_api.scan_calls == []


async def test_a_truncated_qr_code_is_called_damaged(session: KioskSession, fake_api: Any) -> None:
    result = await session.scan(fresh_code()[:-4])
    assert isinstance(result, Notice) and result.title == "Damaged code"
    assert fake_api.scan_calls == []


def test_normalise_code() -> None:
    assert normalise_code(" rg1:abc\r\n") == "RG1:ABC"
    assert normalise_code("+44 20 7946 0000") == "+44 20 7946 0000"


async def test_offline_accrual_waits_and_lands_once_when_back(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    card = card_factory()
    fake_api.cards[code] = card
    assert isinstance(await session.scan(code), CurrentGuest)

    fake_api.offline = True
    notice = await session.accrue(450, "R-9")
    assert notice.tone == "warning" and "credited when the server is back" in notice.title
    assert session.outbox.counts().pending == 1
    assert session.status().connection == "offline"

    fake_api.offline = False
    report = await session.drain_outbox()
    assert len(report.delivered) == 1
    await session.drain_outbox()
    assert len(fake_api.effects) == 1
    assert fake_api.balances[str(card.guest.id)] == 4
    assert session.status().pending == 0


async def test_scan_while_offline_keeps_the_code_for_a_late_accrual(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.offline = True
    scanned_at = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)
    current = await session.scan(code, scanned_at)
    assert isinstance(current, CurrentGuest) and current.offline

    notice = await session.reserve_redemption(50)
    assert isinstance(notice, Notice) and "needs the server" in notice.detail

    await session.accrue(300)
    fake_api.offline = False
    fake_api.cards[code] = card_factory()
    await session.drain_outbox()
    # The replay looks the code up judged by when it was scanned, then credits.
    assert fake_api.scan_calls[-1] == (code, scanned_at)
    assert fake_api.accrue_calls[-1][1].scanned_at == scanned_at
    assert session.outbox.counts().delivered == 1


async def test_online_accrual_updates_the_card(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    card = card_factory()
    fake_api.cards[code] = card
    fake_api.balances[str(card.guest.id)] = 420
    await session.scan(code)
    notice = await session.accrue(1250)
    assert (notice.tone, notice.title) == ("success", "+12 points")
    assert session.current is not None and session.current.view is not None
    assert session.current.view.points_line.startswith("432 points")


async def test_an_accrual_redraws_the_next_tier_line(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.cards[code] = card_factory()  # gold, 80 points to platinum
    await session.scan(code)
    assert session.current is not None and session.current.view is not None
    assert session.current.view.next_tier_line == "80 points to platinum"

    fake_api.standing_after_accrual = {
        "tier": "platinum", "next_tier": "diamond", "points_to_next_tier": 1900
    }  # fmt: skip
    await session.accrue(1250)

    view = session.current.view
    assert view is not None
    assert (view.tier, view.next_tier_line) == ("Platinum", "1,900 points to diamond")


async def test_an_accrual_from_an_older_server_keeps_the_scans_tier(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.cards[code] = card_factory()
    await session.scan(code)
    await session.accrue(1250)  # the answer names no tier
    view = session.current.view if session.current else None
    assert view is not None and (view.tier, view.next_tier_line) == (
        "Gold",
        "80 points to platinum",
    )


async def test_redemption_is_reserved_then_posted_once(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.cards[code] = card_factory()
    await session.scan(code)
    hold = await session.reserve_redemption(100)
    assert isinstance(hold, RedemptionHold) and hold.transfer.state == "pending"

    fake_api.fail_next = [Offline("blip")]
    retry = await session.confirm_redemption()
    assert retry.tone == "warning" and session.hold is hold  # still confirmable
    done = await session.confirm_redemption()
    assert done.title == "Redeemed 100 points"
    posts = [key for kind, key in fake_api.redemption_calls if kind == "post"]
    assert posts == [hold.post_key, hold.post_key]  # the retry reused the key
    assert session.hold is None


async def test_redemption_can_be_cancelled(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.cards[code] = card_factory()
    await session.scan(code)
    await session.reserve_redemption(100)
    notice = await session.cancel_redemption()
    assert notice.title == "Redemption cancelled"
    assert [kind for kind, _ in fake_api.redemption_calls] == ["reserve", "void"]


async def test_redemption_offline_says_it_needs_the_server(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.cards[code] = card_factory()
    await session.scan(code)
    fake_api.offline = True
    notice = await session.reserve_redemption(100)
    assert isinstance(notice, Notice)
    assert notice.title == "Server unreachable" and "needs the server" in notice.detail


async def test_insufficient_points_is_a_message(
    session: KioskSession, fake_api: Any, card_factory: Any
) -> None:
    code = fresh_code()
    fake_api.cards[code] = card_factory()
    await session.scan(code)
    fake_api.fail_next = [ApiProblem(422, "insufficient-points", "only 20 available")]
    notice = await session.reserve_redemption(100)
    assert isinstance(notice, Notice) and notice.title == "Not enough points"


async def test_an_expired_session_signs_out(
    session: KioskSession, fake_api: Any, listener: Any
) -> None:
    fake_api.fail_next = [ApiProblem(401, "invalid-token", "token expired")]
    notice = await session.scan("12345678")
    assert isinstance(notice, Notice) and notice.title == "Signed out"
    assert listener.signed_out_notices and not session.signed_in


async def test_sign_in_picks_a_location_and_reports_refusal(
    session: KioskSession, fake_api: Any
) -> None:
    refused = await session.sign_in_password("barista@demo.regulars.test", "nope")
    assert refused.tone == "error" and refused.title == "Sign-in refused"
    session.config = session.config.with_changes(location_id=None, location_name=None)
    ok = await session.sign_in_password("barista@demo.regulars.test", "demo-password")
    assert ok.tone == "success"
    assert session.config.location_name == "Canal St"
    await session.close()


async def test_queue_events_alert_once_per_new_order(
    session: KioskSession, fake_api: Any, listener: Any, order_factory: Any
) -> None:
    existing = order_factory("accepted")
    fake_api.orders[existing.id] = existing
    await session.refresh_queue()
    assert listener.queues[-1][1] == []

    new = order_factory("placed")
    await session._on_live_event(LiveEvent("order.placed", new))
    rows, alerts = listener.queues[-1]
    assert alerts == [new] and any(r.is_new for r in rows)

    other_location = order_factory("placed", location_id=new.guest_id)
    await session._on_live_event(LiveEvent("order.placed", other_location))
    assert other_location.id not in session.queue.orders

    fake_api.orders[new.id] = new
    assert await session.advance(new.id) is None
    assert session.queue.orders[new.id].status == "accepted"


def test_live_messages_are_parsed_and_garbage_ignored(order_factory: Any) -> None:
    import msgspec

    order = order_factory()
    raw = msgspec.json.encode({"event": "order.placed", "order": order})
    event = parse_event(raw)
    assert event is not None and event.order == order and event.event == "order.placed"
    assert parse_event(b"not json") is None
    assert parse_event(b'{"event": "ping"}') is None
    assert parse_event(b'{"event": "order.placed", "order": {"id": 1}}') is None


def test_backoff_grows_is_capped_and_resets() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, rng=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 30.0
    backoff.reset()
    assert backoff.next_delay() == 0.5
    low = Backoff(initial_s=0.5, max_s=30.0, rng=lambda: 0.0)
    assert all(low.next_delay() == 0.25 for _ in range(5))  # jitter floor, never zero


def test_status_change_reaches_the_listener(session: KioskSession, listener: Any) -> None:
    session._set_connection("offline")
    assert listener.statuses[-1].connection == "offline"
    assert "Offline" in listener.statuses[-1].banner.text
