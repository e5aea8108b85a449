"""The approver's sign-in for one accrual over the barista's limits (issue 21, finding 2).

A shift lead or manager types their email and PIN (or password and authenticator code) on
the barista's tablet; the session borrows that sign-in for this one accrual only. A refusal
keeps the prompt open with the reason; the accrual keeps waiting until approved or cancelled.
"""

from __future__ import annotations

from typing import Any

from kivy.app import App
from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.modalview import ModalView

from kiosk.presenters import ApprovalView, Notice
from kiosk.screens._kv import load_kv

__all__ = ["ApprovalPopup"]

load_kv(__file__)


class ApprovalPopup(ModalView):
    key = StringProperty("")
    title_text = StringProperty("")
    detail_text = StringProperty("")
    error_text = StringProperty("")
    mode = StringProperty("pin")  # "pin" | "password"
    showing = BooleanProperty(False)

    def show(self, view: ApprovalView, paired: bool) -> None:
        """Open for ``view``'s accrual with empty fields (PIN first on a paired tablet)."""
        if self.key != view.key:
            self.ids.email.text = ""
        self.key = view.key
        self.error_text = ""
        self.mode = "pin" if paired else "password"
        self.update(view)
        self._clear_secrets()
        if not self.showing:
            self.open()

    def update(self, view: ApprovalView) -> None:
        """Refresh the words (the approver's own limits may have named other roles)."""
        self.title_text = view.title
        self.detail_text = view.detail

    def on_open(self, *_args: Any) -> None:
        self.showing = True

    def on_dismiss(self, *_args: Any) -> None:
        self.showing = False

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.error_text = ""
        self._clear_secrets()

    def submit(self) -> None:
        self.error_text = ""
        App.get_running_app().approve(
            self.key,
            self.ids.email.text,
            self.ids.secret.text,
            self.ids.totp.text,
            self.mode,
        )

    def refused(self, notice: Notice) -> None:
        """Stay open with why (wrong PIN, not an approver, ...); the secret is cleared."""
        self.error_text = " ".join(x for x in (notice.title + ".", notice.detail) if x)
        self._clear_secrets()

    def _clear_secrets(self) -> None:
        self.ids.secret.text = ""
        self.ids.totp.text = ""
