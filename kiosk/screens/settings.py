"""Settings: server address, camera, the outbox, pairing and signing out."""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.properties import NumericProperty, StringProperty
from kivy.uix.screenmanager import Screen

from kiosk.outbox import OutboxEntry
from kiosk.presenters import format_minor
from kiosk.screens._kv import load_kv
from kiosk.session import SessionStatus

__all__ = ["SettingsScreen"]

load_kv(__file__)


class SettingsScreen(Screen):
    outbox_summary = StringProperty("")
    outbox_lines = StringProperty("")
    device_text = StringProperty("")
    camera = StringProperty("auto")
    waiting_approval = NumericProperty(0)

    def on_pre_enter(self, *_args: Any) -> None:
        app = App.get_running_app()
        cfg = app.kiosk_config
        self.ids.server_url.text = cfg.server_url
        self.camera = cfg.camera
        paired = f"paired as device {cfg.device_id}" if cfg.paired else "not paired"
        self.device_text = f"{cfg.location_name or 'No location'} · {paired}\nData: {cfg.data_dir}"
        self.show_outbox(app.outbox.entries(limit=50))

    def show_status(self, status: SessionStatus) -> None:
        self.waiting_approval = status.needs_approval
        approval = f"{status.needs_approval} need approval · " if status.needs_approval else ""
        self.outbox_summary = (
            f"{status.pending} waiting to send · {approval}{status.rejected} refused · "
            f"connection: {status.connection}"
        )

    def show_outbox(self, entries: list[OutboxEntry]) -> None:
        """The most recent entries, newest first, with the reason for any refusal."""
        lines = []
        currency = App.get_running_app().session.currency
        for entry in reversed(entries[-8:]):
            amount = format_minor(entry.accrual.amount_paid_minor, currency)
            when = entry.created_at.astimezone().strftime("%H:%M")
            reason = (
                f" — {entry.last_error}" if entry.state != "delivered" and entry.last_error else ""
            )
            state = entry.state.replace("_", " ")
            lines.append(f"{when}  {amount}  {state}{reason}")
        self.outbox_lines = "\n".join(lines) or "Nothing recorded yet."

    def save_server(self) -> None:
        App.get_running_app().save_server_url(self.ids.server_url.text)

    def choose_camera(self, mode: str) -> None:
        self.camera = mode
        App.get_running_app().save_camera(mode)
