"""The Kivy shell: one App that wires the session, the scan sources and the screens.

This is the only place where Kivy meets the session layer. Network work runs on the
:class:`~kiosk.runner.AsyncRunner` loop; results and background events come back to the UI
thread through ``Clock.schedule_once``.
"""

from __future__ import annotations

import logging
import math
import struct
import wave
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.graphics.texture import Texture
from kivy.lang import Builder
from kivy.properties import BooleanProperty, ColorProperty, NumericProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.screenmanager import NoTransition, ScreenManager
from kivy.uix.textinput import TextInput

from kiosk import theme
from kiosk.api import KioskApi
from kiosk.config import DEMO_EMAIL, DEMO_PASSWORD, KioskConfig
from kiosk.outbox import DrainReport, Outbox
from kiosk.presenters import Notice, OrderRow, approvers_phrase
from kiosk.runner import AsyncRunner
from kiosk.scanner import FeedSource, FramePipeline, KeyboardWedge, WedgeBuffer
from kiosk.scanner.base import Origin
from kiosk.scanner.camera import CameraUnavailable, KivyCameraSource
from kiosk.screens import (
    ApprovalPopup,
    GuestScreen,
    PairingScreen,
    QueueScreen,
    ScanScreen,
    SettingsScreen,
    SignInScreen,
)
from kiosk.session import CurrentGuest, KioskSession, SessionStatus
from kiosk.settings import KioskSettings
from shared import contract

__all__ = ["KioskApp", "KioskRoot"]

log = logging.getLogger("kiosk.app")
T = TypeVar("T")

Builder.load_file(str(Path(__file__).with_name("theme.kv")))


class KioskRoot(BoxLayout):
    """Banner, notice strip, screens and the bottom navigation (layout in theme.kv)."""


class _UiListener:
    """Forwards session events from the network thread to the app on the UI thread."""

    def __init__(self, app: KioskApp) -> None:
        self._app = app

    def status_changed(self, status: SessionStatus) -> None:
        self._app.runner.to_ui(lambda: self._app.apply_status(status))

    def queue_changed(self, rows: list[OrderRow], new_orders: list[contract.Order]) -> None:
        self._app.runner.to_ui(lambda: self._app.apply_queue(rows, new_orders))

    def signed_out(self, notice: Notice) -> None:
        self._app.runner.to_ui(lambda: self._app.on_signed_out(notice))

    def outbox_drained(self, report: DrainReport) -> None:
        self._app.runner.to_ui(lambda: self._app.on_outbox_drained(report))


def _deliver(fn: Callable[[], None]) -> None:
    Clock.schedule_once(lambda _dt: fn(), 0)


class KioskApp(App):
    """The staff kiosk. ``demo=True`` signs in to a local ``regulars dev`` stack by itself."""

    title = "Regulars Kiosk"
    banner_text = StringProperty("Connecting…")
    banner_colour = ColorProperty(theme.TONES["info"])
    staff_label = StringProperty("")
    notice_title = StringProperty("")
    notice_detail = StringProperty("")
    notice_colour = ColorProperty(theme.TONES["info"])
    notice_visible = BooleanProperty(False)
    signed_in = BooleanProperty(False)
    online = BooleanProperty(False)
    queue_badge = NumericProperty(0)
    busy = BooleanProperty(False)
    # Mirrors of the config for .kv bindings (the config itself is an immutable dataclass).
    paired = BooleanProperty(False)
    location_name = StringProperty("")
    server_url = StringProperty("")

    def __init__(
        self,
        kiosk_config: KioskConfig,
        kiosk_settings: KioskSettings | None = None,
        demo: bool = False,
        sound: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._kiosk_config = kiosk_config
        self.kiosk_config = kiosk_config
        self._in_flight = 0
        self.kiosk_settings = kiosk_settings or KioskSettings()
        self.demo = demo
        self.sound_enabled = sound
        self.runner = AsyncRunner(_deliver)
        self.outbox = Outbox(kiosk_config.outbox_path)
        self.api = KioskApi(kiosk_config.server_url, self.kiosk_settings)
        self.session = KioskSession(
            self.api, self.outbox, kiosk_config, self.kiosk_settings, _UiListener(self)
        )
        s = self.kiosk_settings
        self.pipeline = FramePipeline(
            self.on_code, _deliver, interval_s=s.decode_interval_s, dedupe_s=s.scan_dedupe_s
        )
        self.feed = FeedSource(self.pipeline, on_preview=self.show_frame)
        self.camera: KivyCameraSource | None = None
        self.wedge = KeyboardWedge(
            Window,
            self.on_code,
            self._wedge_accepts,
            WedgeBuffer(s.wedge_max_gap_s, s.wedge_min_length),
        )
        self._notice_event: Any = None
        self._approval_popup: ApprovalPopup | None = None
        self._lookup_in_flight = False
        self._alert_sound: Any = None
        self._shut_down = False
        self.last_status: SessionStatus | None = None

    @property
    def kiosk_config(self) -> KioskConfig:
        return self._kiosk_config

    @kiosk_config.setter
    def kiosk_config(self, config: KioskConfig) -> None:
        self._kiosk_config = config
        self.paired = config.paired
        self.location_name = config.location_name or ""
        self.server_url = config.server_url

    # -- building ---------------------------------------------------------------------

    def load_kv(self, filename: str | None = None) -> bool:
        """Each screen loads its own .kv on import; there is no app-wide kiosk.kv."""
        return True

    def build(self) -> KioskRoot:
        """The widget tree: every screen is built once and kept."""
        root = KioskRoot()
        sm: ScreenManager = root.ids.screens
        sm.transition = NoTransition()  # instant: a barista never waits on an animation
        for screen in (
            PairingScreen(name="pairing"),
            SignInScreen(name="signin"),
            ScanScreen(name="scan"),
            GuestScreen(name="guest"),
            QueueScreen(name="queue"),
            SettingsScreen(name="settings"),
        ):
            sm.add_widget(screen)
        Window.clearcolor = theme.BG
        return root

    @property
    def screens(self) -> ScreenManager:
        return self.root.ids.screens

    def screen(self, name: str) -> Any:
        return self.screens.get_screen(name)

    def go(self, name: str) -> None:
        """Show screen ``name``; the camera runs only while the scan screen is up."""
        self.screens.current = name
        if name == "scan":
            self._start_camera()
        else:
            self._stop_camera()

    def on_start(self) -> None:
        self.runner.start()
        self.runner.call(self.session.start())
        self.wedge.start()
        self.feed.start()
        self.screen("signin").prefill(self.kiosk_config.last_email or "")
        if self.demo:
            self.go("signin")
            self.sign_in_password(DEMO_EMAIL, DEMO_PASSWORD)
        elif self.kiosk_config.paired:
            self.go("signin")
        else:
            self.go("pairing")

    def on_stop(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop scanners, background work and the network loop (idempotent: on_stop fires twice)."""
        if self._shut_down:
            return
        self._shut_down = True
        self.wedge.stop()
        self.feed.stop()
        self._stop_camera()
        self.pipeline.close()
        try:
            self.runner.submit(self.session.close()).result(timeout=5)
        except Exception:  # a hung close must not keep the app from quitting
            log.warning("session close did not finish cleanly", exc_info=True)
        self.runner.stop()
        self.outbox.close()

    # -- talking to the session -------------------------------------------------------

    def run_bg(self, coro: Coroutine[Any, Any, T], on_done: Callable[[T], None]) -> None:
        """Run a session coroutine off the UI thread; ``on_done`` gets its result on the UI."""
        self._in_flight += 1
        self.busy = True

        def done(result: T) -> None:
            self._in_flight -= 1
            self.busy = self._in_flight > 0
            on_done(result)

        def failed(_exc: BaseException) -> None:
            self._in_flight -= 1
            self.busy = self._in_flight > 0
            self._lookup_in_flight = False
            self.show_notice(Notice("error", "Something went wrong", "It was logged. Try again."))

        self.runner.call(coro, done, failed)

    def show_notice(self, notice: Notice, timeout_s: float = 6.0) -> None:
        """Show a message strip under the banner; it hides itself after ``timeout_s``."""
        self.notice_title = notice.title
        self.notice_detail = notice.detail
        self.notice_colour = theme.tone_colour(notice.tone)
        self.notice_visible = True
        if self._notice_event is not None:
            self._notice_event.cancel()
        self._notice_event = Clock.schedule_once(lambda _dt: self.hide_notice(), timeout_s)

    def hide_notice(self) -> None:
        self.notice_visible = False

    def apply_status(self, status: SessionStatus) -> None:
        """Banner text and colour from the session's connection and outbox state."""
        self.last_status = status
        self.banner_text = status.banner.text
        self.banner_colour = theme.tone_colour(status.banner.tone)
        self.signed_in = self.session.signed_in
        self.online = status.connection in ("online", "signed-out")
        where = status.location_name
        self.staff_label = f"{status.staff} · {where}" if status.staff else where
        self.screen("settings").show_status(status)
        self.screen("queue").show_live(status.live_queue)

    # sign-in -------------------------------------------------------------------------

    def pair(self, code: str) -> None:
        def done(notice: Notice) -> None:
            self.show_notice(notice)
            if notice.tone == "success":
                self.kiosk_config = self.session.config
                self.go("signin")
                self.screen("signin").set_mode("pin")

        self.run_bg(self.session.pair(code), done)

    def sign_in_password(self, email: str, password: str) -> None:
        self.run_bg(self.session.sign_in_password(email, password), self._signed_in)

    def sign_in_pin(self, email: str, pin: str) -> None:
        self.run_bg(self.session.sign_in_pin(email, pin), self._signed_in)

    def _signed_in(self, notice: Notice) -> None:
        self.show_notice(notice)
        self.signed_in = self.session.signed_in
        if notice.tone == "success":
            self.kiosk_config = self.session.config
            self.screen("signin").clear_secret()
            self.go("scan")

    def sign_out(self) -> None:
        self.session_call_sync(self.session.sign_out)
        self.signed_in = False
        self.queue_badge = 0
        self.go("signin")

    def session_call_sync(self, fn: Callable[[], None]) -> None:
        """Run a plain session method on the loop thread (it owns the session's state)."""
        self.runner.loop.call_soon_threadsafe(fn)

    def on_signed_out(self, notice: Notice) -> None:
        self.signed_in = False
        self.show_notice(notice)
        self.go("signin")

    # scanning ------------------------------------------------------------------------

    def _wedge_accepts(self) -> bool:
        if not self.signed_in or self.screens.current not in ("scan", "guest"):
            return False
        if self._approval_popup is not None and self._approval_popup.showing:
            return False  # the approver is typing into the prompt
        screen = self.screens.current_screen
        return not any(isinstance(w, TextInput) and w.focus for w in screen.walk())

    def on_code(self, code: str, origin: Origin) -> None:
        """A code from any source: look the guest up (one lookup at a time)."""
        if not self.signed_in:
            self.show_notice(Notice("info", "Sign in first", "Then scan the guest's code."))
            return
        if self._lookup_in_flight:
            return
        self._lookup_in_flight = True
        log.info("code from %s", origin)
        self.screen("scan").show_looking_up(True)
        self.run_bg(self.session.scan(code), self._scanned)

    def _scanned(self, result: CurrentGuest | Notice) -> None:
        self._lookup_in_flight = False
        self.screen("scan").show_looking_up(False)
        if isinstance(result, Notice):
            self.show_notice(result, timeout_s=8)
            return
        self.screen("guest").show_guest(result)
        self.refresh_approvals()
        if result.offline:
            self.show_notice(
                Notice(
                    "warning",
                    "Offline — guest not looked up",
                    "You can still record a purchase; it is credited when the server is back.",
                ),
                timeout_s=8,
            )
        else:
            self.hide_notice()
        self.go("guest")

    def _start_camera(self) -> None:
        mode = self.kiosk_config.camera
        scan = self.screen("scan")
        if mode in ("none", "feed"):
            scan.show_camera_state("Test feed" if mode == "feed" else "Camera off")
            return
        if self.camera is None:
            index = int(mode) if mode.isdigit() else 0
            self.camera = KivyCameraSource(self.pipeline, self.show_texture, index=index)
        try:
            self.camera.start()
            scan.show_camera_state("")
        except CameraUnavailable as exc:
            self.camera = None
            scan.show_camera_state(f"No camera ({exc}). Use the scanner or type the code.")

    def _stop_camera(self) -> None:
        if self.camera is not None:
            self.camera.stop()

    def show_texture(self, texture: Texture) -> None:
        self.screen("scan").show_preview(texture)

    def show_frame(self, rgb: np.ndarray) -> None:
        """Preview a fed RGB frame (top-down rows) as a texture."""
        height, width = rgb.shape[:2]
        texture = Texture.create(size=(width, height), colorfmt="rgb")
        texture.blit_buffer(
            np.ascontiguousarray(rgb[::-1]).tobytes(), colorfmt="rgb", bufferfmt="ubyte"
        )
        self.show_texture(texture)

    # guest card ----------------------------------------------------------------------

    def accrue(self, amount_minor: int, receipt_ref: str) -> None:
        def done(notice: Notice) -> None:
            self.show_notice(notice, timeout_s=8)
            self.screen("guest").accrual_done(notice, self.session.current)
            self.refresh_approvals()

        self.run_bg(self.session.accrue(amount_minor, receipt_ref), done)

    # accruals over the barista's limits ----------------------------------------------

    @property
    def approval_popup(self) -> ApprovalPopup:
        if self._approval_popup is None:
            self._approval_popup = ApprovalPopup()
        return self._approval_popup

    def refresh_approvals(self) -> None:
        """Show the current guest's accrual waiting for approval (guest screen, Settings)."""
        current = self.session.current
        guest_id = current.card.guest.id if current is not None and current.card else None
        mine = self.session.approvals(guest_id) if guest_id is not None else []
        self.screen("guest").show_approval(mine[0] if mine else None, len(mine))
        self.screen("settings").show_outbox(self.outbox.entries(limit=50))

    def open_approval(self, key: str | None = None) -> None:
        """The approver's prompt for ``key`` (by default the oldest accrual waiting)."""
        waiting = self.session.approvals()
        view = next((v for v in waiting if key is None or v.key == key), None)
        if view is None:
            self.show_notice(Notice("info", "Nothing waiting for approval"))
            self.refresh_approvals()
            return
        self.approval_popup.show(view, self.kiosk_config.paired)

    def approve(self, key: str, email: str, secret: str, totp: str, mode: str) -> None:
        """Send a waiting accrual with the approver's PIN (or password and TOTP)."""
        if mode == "pin":
            coro = self.session.approve_with_pin(key, email, secret)
        else:
            coro = self.session.approve_with_password(key, email, secret, totp or None)

        def done(notice: Notice) -> None:
            popup = self.approval_popup
            entry = self.outbox.get(key)
            if entry is not None and entry.state == "needs_approval":
                still = next((v for v in self.session.approvals() if v.key == key), None)
                if still is not None:
                    popup.update(still)
                popup.refused(notice)
            else:
                popup.dismiss()
                self.show_notice(notice, timeout_s=8)
                self.screen("guest").accrual_done(notice, self.session.current)
            self.refresh_approvals()

        self.run_bg(coro, done)

    def cancel_approval(self, key: str) -> None:
        def done(notice: Notice) -> None:
            if self._approval_popup is not None:
                self._approval_popup.dismiss()
            self.show_notice(notice)
            self.refresh_approvals()

        self.run_bg(self.session.cancel_approval(key), done)

    def reserve_redemption(self, points: int) -> None:
        def done(result: Any) -> None:
            if isinstance(result, Notice):
                self.show_notice(result, timeout_s=8)
                return
            self.screen("guest").show_hold(result, self.session.current)

        self.run_bg(self.session.reserve_redemption(points), done)

    def confirm_redemption(self) -> None:
        def done(notice: Notice) -> None:
            self.show_notice(notice, timeout_s=8)
            self.screen("guest").hold_finished(notice, self.session.hold, self.session.current)

        self.run_bg(self.session.confirm_redemption(), done)

    def cancel_redemption(self) -> None:
        def done(notice: Notice) -> None:
            self.show_notice(notice)
            self.screen("guest").hold_finished(notice, None, self.session.current)

        self.run_bg(self.session.cancel_redemption(), done)

    # queue ---------------------------------------------------------------------------

    def apply_queue(self, rows: list[OrderRow], new_orders: list[contract.Order]) -> None:
        self.screen("queue").show_rows(rows)
        self.queue_badge = sum(1 for r in rows if r.is_new)
        if new_orders:
            first = new_orders[0]
            who = first.guest_display_name or "a guest"
            more = f" (+{len(new_orders) - 1} more)" if len(new_orders) > 1 else ""
            items = ", ".join(f"{ln.quantity}× {ln.name}" for ln in first.lines)
            self.show_notice(Notice("info", f"New pre-order from {who}{more}", items), timeout_s=10)
            self._beep()

    def advance_order(self, order_id: Any) -> None:
        def done(notice: Notice | None) -> None:
            if notice is not None:
                self.show_notice(notice)

        self.run_bg(self.session.advance(order_id), done)

    def refresh_queue(self) -> None:
        def done(notice: Notice | None) -> None:
            if notice is not None:
                self.show_notice(notice)

        self.run_bg(self.session.refresh_queue(), done)

    def _beep(self) -> None:
        if not self.sound_enabled:
            return
        try:
            if self._alert_sound is None:
                from kivy.core.audio import SoundLoader

                path = _beep_wav(self.kiosk_config.data_dir / "new-order.wav")
                self._alert_sound = SoundLoader.load(str(path))
            if self._alert_sound is not None:
                self._alert_sound.play()
        except Exception:  # no audio device is not a reason to miss the visual alert
            log.info("alert sound unavailable", exc_info=True)
            self.sound_enabled = False

    # settings ------------------------------------------------------------------------

    def save_server_url(self, url: str) -> None:
        def done(notice: Notice) -> None:
            self.show_notice(notice)
            if notice.tone == "success":
                self.kiosk_config = self.session.config
                self.signed_in = False
                self.go("signin")

        self.run_bg(self.session.set_server_url(url), done)

    def save_camera(self, mode: str) -> None:
        self._stop_camera()
        self.camera = None
        self.kiosk_config = self.kiosk_config.with_changes(camera=mode)
        self.session.config = self.session.config.with_changes(camera=mode)
        self.session.config.save()
        self.show_notice(Notice("success", "Camera setting saved", mode))

    def send_outbox_now(self) -> None:
        def done(report: DrainReport) -> None:
            self.on_outbox_drained(report, always=True)

        self.run_bg(self.session.drain_outbox(), done)

    def on_outbox_drained(self, report: DrainReport, always: bool = False) -> None:
        sent, refused = len(report.delivered), len(report.rejected)
        waiting = len(report.needs_approval)
        if not (sent or refused or waiting or always):
            return
        if refused:
            notice = Notice("error", f"{refused} saved accrual(s) refused", "See Settings for why.")
        elif waiting:
            who = approvers_phrase(report.needs_approval[0][1].approver_roles)
            notice = Notice(
                "warning",
                f"{waiting} saved accrual(s) need approval",
                f"{who} can approve them in Settings.",
            )
        elif sent:
            notice = Notice("success", f"Sent {sent} saved accrual(s)", "Points credited.")
        elif report.stopped == "offline":
            notice = Notice("warning", "Still offline", "Saved accruals wait for the server.")
        else:
            notice = Notice("info", "Nothing waiting to send")
        self.show_notice(notice)
        self.refresh_approvals()


def _beep_wav(path: Path) -> Path:
    """A short two-tone chime, written once (no binary assets in the repository)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 22_050
    frames = bytearray()
    for freq, dur in ((880, 0.12), (1320, 0.18)):
        for i in range(int(rate * dur)):
            fade = min(1.0, (rate * dur - i) / 400)
            frames += struct.pack(
                "<h", int(12_000 * fade * math.sin(2 * math.pi * freq * i / rate))
            )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return path
