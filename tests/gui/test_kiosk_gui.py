"""The kiosk end to end: real app, real server, a generated camera frame and a fake scanner.

Every test saves screenshots of what it shows into a temporary folder (or
$REGULARS_SCREENSHOTS_DIR: see tests/gui/conftest.py).
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import httpx
import numpy as np
import pytest
import qrcode
from PIL import Image, ImageFilter

from shared import qr

KioskDriver = Any  # the `kiosk` fixture's driver, defined in conftest.py

pytestmark = pytest.mark.gui


def camera_frame(code: str, size: tuple[int, int] = (1280, 720)) -> Image.Image:
    """A 1280×720 camera frame: the guest's phone showing the QR, tilted, on a busy background."""
    symbol = qrcode.make(code, box_size=7, border=4).convert("L")
    symbol = symbol.rotate(9, expand=True, fillcolor=255)
    rng = np.random.default_rng(11)
    background = rng.normal(110, 40, (size[1], size[0])).clip(0, 255).astype(np.uint8)
    frame = Image.fromarray(background).filter(ImageFilter.GaussianBlur(1.5)).convert("RGB")
    frame.paste(symbol.convert("RGB"), (size[0] // 2 - symbol.width // 2, 40))
    return frame


def new_guest(server: Any, points: int = 0) -> SimpleNamespace:
    """A signed-up guest (live_server.new_guest): id, token, phone, public_id, qr_secret."""
    return SimpleNamespace(**server.new_guest(points=points))


def wallet_points(server: Any, guest: SimpleNamespace) -> int:
    """The guest's spendable points as the guest app sees them (GET /v1/me/wallet)."""
    response = httpx.get(
        f"{server.base_url}/v1/me/wallet",
        headers={"Authorization": f"Bearer {guest.token}"},
        timeout=10,
    )
    response.raise_for_status()
    return int(response.json()["points_available"])


def place_order(server: Any, guest: SimpleNamespace, location_id: str) -> UUID:
    """The guest pre-orders the first available item and pays with the test provider."""
    auth = {"Authorization": f"Bearer {guest.token}"}
    with httpx.Client(base_url=server.base_url, timeout=15, headers=auth) as http:
        menu = http.get(f"/v1/locations/{location_id}/menu").json()
        item = next(i for c in menu["categories"] for i in c["items"] if i["available"])
        created = http.post(
            "/v1/orders",
            json={"location_id": location_id, "lines": [{"item_id": item["id"], "quantity": 2}]},
            headers={"Idempotency-Key": str(uuid4())},
        )
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        paid = http.post(
            f"/v1/orders/{order_id}/payments",
            json={"provider": "test", "token": "ok"},
            headers={"Idempotency-Key": str(uuid4())},
        )
        assert paid.status_code in (200, 201), paid.text
        assert paid.json()["status"] == "placed", paid.text
    return UUID(order_id)


def code_for(guest: Any, now_s: float | None = None, secret: bytes | None = None) -> str:
    return qr.generate(guest.public_id, secret or guest.qr_secret, now_s=now_s)


def shown_guest(kiosk: KioskDriver) -> UUID | None:
    current = kiosk.app.session.current
    return current.card.guest.id if current is not None and current.card is not None else None


def open_card(kiosk: KioskDriver, guest: SimpleNamespace) -> None:
    kiosk.scanner_types(code_for(guest))
    kiosk.pump(
        lambda: kiosk.app.screens.current == "guest" and shown_guest(kiosk) == UUID(guest.id),
        what="guest card",
    )
    assert kiosk.app.screen("guest").name_text


def test_sign_in_screens(kiosk: KioskDriver) -> None:
    kiosk.screenshot("01-pairing-1280x800")
    kiosk.app.go("signin")
    kiosk.app.screen("signin").set_mode("password")
    kiosk.screenshot("02-sign-in-1280x800")
    kiosk.sign_in()
    assert kiosk.app.signed_in
    kiosk.pump(lambda: kiosk.app.banner_text.startswith("Online"), what="online banner")
    kiosk.screenshot("05-scan-ready-1280x800")


def test_pairing_then_pin_sign_in(kiosk: KioskDriver) -> None:
    code = kiosk.server.pairing_code("station")
    kiosk.app.go("pairing")
    kiosk.frames(2)
    kiosk.app.screen("pairing").ids.code.text = code
    kiosk.tap(kiosk.button("pairing", "Pair tablet"))
    kiosk.pump(lambda: kiosk.app.kiosk_config.paired, what="pairing")
    kiosk.app.go("signin")
    screen = kiosk.app.screen("signin")
    screen.set_mode("pin")
    kiosk.frames(2)
    screen.ids.email.text = "barista@demo.regulars.test"
    screen.ids.secret.text = "1234"
    kiosk.tap(kiosk.button("signin", "Sign in"))
    kiosk.pump(lambda: kiosk.app.screens.current == "scan", what="PIN sign-in")
    assert kiosk.app.signed_in


def test_qr_in_a_camera_frame_opens_the_right_guest(kiosk: KioskDriver) -> None:
    guest = new_guest(kiosk.server, points=120)
    new_guest(kiosk.server)  # another guest, who must not be the one shown
    kiosk.sign_in()
    kiosk.app.go("scan")
    frame = camera_frame(code_for(guest))
    kiosk.app.show_frame(np.asarray(frame))  # the preview alone, for the screenshot
    kiosk.screenshot("03-scan-camera-1280x800")
    future = kiosk.app.feed.feed(frame)  # preview and decode, as camera frames go
    assert future is not None
    kiosk.pump(lambda: shown_guest(kiosk) == UUID(guest.id), what="guest card from camera")
    kiosk.pump(lambda: kiosk.app.screens.current == "guest", what="guest screen")
    screen = kiosk.app.screen("guest")
    expected = wallet_points(kiosk.server, guest)
    assert screen.points_text.startswith(f"{expected:,} points")
    kiosk.screenshot("04-guest-card-new-guest-1280x800")


def test_typed_card_number_opens_a_regulars_card(kiosk: KioskDriver) -> None:
    kiosk.sign_in()
    scan = kiosk.app.screen("scan")
    scan.ids.manual.text = "000000000002"  # a seeded demo regular's loyalty card number
    kiosk.tap(kiosk.button("scan", "Look up guest"))
    kiosk.pump(lambda: kiosk.app.screens.current == "guest", what="card from card number")
    screen = kiosk.app.screen("guest")
    assert screen.name_text and "points" in screen.points_text
    kiosk.screenshot("04-guest-card-1280x800")
    kiosk.size(1920, 1200)
    kiosk.screenshot("04-guest-card-1920x1200")
    kiosk.size(1280, 800)
    if screen.usual_total_minor:  # one tap puts the usual order into the accrual amount
        kiosk.tap(kiosk.button("guest", "Usual order"))
        assert screen.ids.amount.text


def test_keyboard_wedge_code_opens_the_guest_card(kiosk: KioskDriver) -> None:
    guest, other = new_guest(kiosk.server), new_guest(kiosk.server)
    kiosk.sign_in()
    open_card(kiosk, guest)
    # The next guest can be scanned straight from the card screen.
    open_card(kiosk, other)


def test_bad_codes_show_a_clear_message(kiosk: KioskDriver) -> None:
    guest = new_guest(kiosk.server)
    kiosk.sign_in()
    cases = {
        "expired": code_for(guest, now_s=time.time() - 3600),
        "forged": code_for(guest, secret=b"not-the-guest-secret"),
        "other brand": qr.generate(qr.new_public_id(), qr.new_secret()),
        "garbage": "NOT-A-CODE-%%%",
    }
    titles = {}
    for label, code in cases.items():
        kiosk.app.hide_notice()
        kiosk.scanner_types(code)
        kiosk.pump(lambda: kiosk.app.notice_visible, what=f"message for {label} code")
        titles[label] = kiosk.app.notice_title
        assert kiosk.app.screens.current == "scan", f"{label} code must not open a card"
        if label == "expired":
            kiosk.screenshot("06-expired-code-1280x800")
    assert titles == {
        "expired": "Code expired",
        "forged": "Code not valid",
        "other brand": "No guest found",  # a foreign brand's code names no guest of ours
        "garbage": "Not a guest code",
    }


def test_redemption_is_reserved_then_posted(kiosk: KioskDriver) -> None:
    guest = new_guest(kiosk.server, points=500)
    start = wallet_points(kiosk.server, guest)
    kiosk.sign_in()
    open_card(kiosk, guest)
    screen = kiosk.app.screen("guest")
    screen.ids.points.text = "100"
    kiosk.tap(screen.ids.redeem)
    kiosk.pump(lambda: bool(screen.hold_text), what="redemption hold")
    assert wallet_points(kiosk.server, guest) == start - 100  # held: not spendable twice
    assert screen.points_text.startswith(f"{start - 100:,} points")
    kiosk.screenshot("07-redeem-confirm-1280x800")
    kiosk.tap(screen.ids.confirm)
    kiosk.pump(lambda: kiosk.app.notice_title == "Redeemed 100 points", what="posted")
    assert not screen.hold_text
    assert wallet_points(kiosk.server, guest) == start - 100
    assert screen.points_text.startswith(f"{start - 100:,} points")


def test_new_preorder_appears_without_a_refresh(kiosk: KioskDriver) -> None:
    guest = new_guest(kiosk.server)
    kiosk.sign_in()
    kiosk.app.go("queue")
    queue = kiosk.app.screen("queue")
    kiosk.pump(lambda: queue.live, what="live queue connected")
    location_id = kiosk.app.kiosk_config.location_id
    order_id = place_order(kiosk.server, guest, location_id)
    kiosk.pump(lambda: queue.row_for(order_id) is not None, what="new order row")
    row = queue.row_for(order_id)
    assert row.status_label == "PLACED" and row.is_new
    assert kiosk.app.queue_badge >= 1
    assert "pre-order" in kiosk.app.notice_title.lower()
    kiosk.screenshot("08-queue-new-order-1280x800")
    kiosk.tap(row.ids.action)
    kiosk.pump(lambda: row.status_label == "ACCEPTED", what="order accepted")
    kiosk.size(1920, 1200)
    kiosk.screenshot("08-queue-1920x1200")
    kiosk.size(1280, 800)


def test_offline_accrual_waits_and_lands_exactly_once(kiosk: KioskDriver) -> None:
    guest = new_guest(kiosk.server, points=10)
    kiosk.sign_in()
    open_card(kiosk, guest)
    before = wallet_points(kiosk.server, guest)

    kiosk.server.stop()
    app = kiosk.app
    kiosk.pump(lambda: app.banner_text.startswith("Offline"), what="offline banner")
    screen = app.screen("guest")
    screen.ids.amount.text = "12.50"
    kiosk.tap(screen.ids.accrue)
    kiosk.pump(lambda: app.notice_title.startswith("Saved"), what="saved to outbox")
    [entry] = app.outbox.entries("pending")
    assert "waiting" in app.banner_text
    kiosk.screenshot("09-offline-outbox-1280x800")

    kiosk.server.start()
    kiosk.pump(lambda: app.outbox.counts().delivered == 1, timeout_s=30, what="replay")
    assert app.outbox.counts().pending == 0
    delivered = app.outbox.get(entry.key)
    assert delivered is not None and delivered.transfer is not None
    assert delivered.transfer.points > 0
    after = wallet_points(kiosk.server, guest)
    assert after == before + delivered.transfer.points

    # Exactly once: sending the same entry again (as after a lost reply) changes nothing.
    replay = app.runner.submit(
        app.api.accrue(delivered.guest_id, delivered.accrual, delivered.key)
    ).result(timeout=10)
    assert replay.id == delivered.transfer.id
    assert wallet_points(kiosk.server, guest) == after

    kiosk.pump(lambda: app.banner_text.startswith("Online"), what="online again")
    app.go("settings")
    kiosk.screenshot("10-settings-1280x800")


def test_an_accrual_over_the_barista_limit_waits_for_a_shift_leads_pin(
    kiosk: KioskDriver,
) -> None:
    """Issue 21, finding 2: refused for approval, it waits on the card; a wrong PIN says so
    and keeps it; the shift lead's PIN credits it once and the barista stays signed in."""
    import asyncio

    from server.seed.demo import PROGRAM
    from tests.integration.test_kiosk_approval import PIN, staff_at

    app = kiosk.app
    app.go("pairing")
    kiosk.frames(2)
    app.screen("pairing").ids.code.text = kiosk.server.pairing_code("station")
    kiosk.tap(kiosk.button("pairing", "Pair tablet"))
    kiosk.pump(lambda: app.kiosk_config.paired, what="pairing")
    location_id = app.kiosk_config.location_id
    barista = asyncio.run(staff_at(kiosk.server, "barista", location_id))
    lead = asyncio.run(staff_at(kiosk.server, "shift_lead", location_id))
    app.go("signin")
    signin = app.screen("signin")
    signin.set_mode("pin")
    kiosk.frames(2)
    signin.ids.email.text = barista.email
    signin.ids.secret.text = PIN
    kiosk.tap(kiosk.button("signin", "Sign in"))
    kiosk.pump(lambda: app.screens.current == "scan", what="barista PIN sign-in")

    guest = new_guest(kiosk.server)
    open_card(kiosk, guest)
    before = wallet_points(kiosk.server, guest)
    max_points = PROGRAM.accrual_limits["barista"].max_points
    assert max_points is not None
    points = max_points + 100
    screen = app.screen("guest")
    screen.ids.amount.text = f"{points * 100 // PROGRAM.earn_per_100_minor / 100:.2f}"
    kiosk.tap(screen.ids.accrue)
    kiosk.pump(lambda: bool(screen.approval_key), what="approval strip")
    assert screen.approval_title == f"A shift lead or manager must approve {points} points"
    assert app.notice_title == screen.approval_title
    kiosk.pump(lambda: "1 needs approval" in app.banner_text, what="banner counts it")
    kiosk.screenshot("11-accrual-needs-approval-1280x800")

    kiosk.tap(screen.ids.approve)
    popup = app.approval_popup
    kiosk.pump(lambda: popup.showing, what="approver prompt")
    assert popup.mode == "pin" and popup.title_text == screen.approval_title
    popup.ids.email.text = lead.email
    popup.ids.secret.text = "0000"
    kiosk.tap(popup.ids.approve)
    kiosk.pump(lambda: bool(popup.error_text), what="wrong PIN message")
    assert popup.error_text.startswith("Wrong email or PIN") and popup.showing
    assert popup.ids.secret.text == ""
    popup.export_to_png(str(kiosk.screenshots / "12-approver-wrong-pin.png"))
    assert app.outbox.counts().needs_approval == 1

    popup.ids.secret.text = PIN
    kiosk.tap(popup.ids.approve)
    kiosk.pump(lambda: not popup.showing, what="approved")
    assert app.notice_title == f"+{points:,} points", app.notice_detail
    assert lead.email in app.notice_detail
    assert not screen.approval_key
    after = wallet_points(kiosk.server, guest)
    assert after == before + points
    assert screen.points_text.startswith(f"{after:,} points")
    assert app.signed_in and app.session.staff_email == barista.email
    assert app.outbox.counts().delivered == 1 and app.outbox.counts().needs_approval == 0
    kiosk.screenshot("13-accrual-approved-1280x800")

    # Another one waits; from Settings the barista cancels it: nothing is credited.
    screen.ids.amount.text = "150.00"
    kiosk.tap(screen.ids.accrue)
    kiosk.pump(lambda: bool(screen.approval_key), what="second approval strip")
    app.go("settings")
    settings = app.screen("settings")
    kiosk.pump(lambda: settings.waiting_approval == 1, what="settings counts it")
    kiosk.tap(settings.ids.approve_waiting)
    kiosk.pump(lambda: popup.showing, what="prompt from settings")
    kiosk.tap(popup.ids.cancel_accrual)
    kiosk.pump(lambda: not popup.showing, what="cancelled")
    assert app.notice_title == "Accrual cancelled" and "150.00" in app.notice_detail
    kiosk.pump(lambda: settings.waiting_approval == 0, what="nothing waiting")
    assert app.outbox.counts().rejected == 1 and not screen.approval_key
    assert wallet_points(kiosk.server, guest) == after


def _uuid(value: Any) -> Any:
    from uuid import UUID

    return value if isinstance(value, UUID) else UUID(str(value))
