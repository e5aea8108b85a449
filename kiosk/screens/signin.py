"""Staff sign-in: PIN on a paired tablet, or email and password."""

from __future__ import annotations

from kivy.app import App
from kivy.properties import StringProperty
from kivy.uix.screenmanager import Screen

from kiosk.screens._kv import load_kv

__all__ = ["SignInScreen"]

load_kv(__file__)


class SignInScreen(Screen):
    mode = StringProperty("password")  # "pin" | "password"

    def on_pre_enter(self, *_args: object) -> None:
        app = App.get_running_app()
        if app.kiosk_config.paired and self.mode == "password" and not app.demo:
            self.mode = "pin"

    def set_mode(self, mode: str) -> None:
        self.mode = mode

    def prefill(self, email: str) -> None:
        if email and not self.ids.email.text:
            self.ids.email.text = email

    def clear_secret(self) -> None:
        self.ids.secret.text = ""

    def submit(self) -> None:
        app = App.get_running_app()
        email, secret = self.ids.email.text, self.ids.secret.text
        if self.mode == "pin":
            app.sign_in_pin(email, secret)
        else:
            app.sign_in_password(email, secret)
