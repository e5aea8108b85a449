"""Pair this tablet with a location (a one-time code from the back office)."""

from __future__ import annotations

from kivy.app import App
from kivy.uix.screenmanager import Screen

from kiosk.screens._kv import load_kv

__all__ = ["PairingScreen"]

load_kv(__file__)


class PairingScreen(Screen):
    def submit(self) -> None:
        App.get_running_app().pair(self.ids.code.text)

    def use_password(self) -> None:
        app = App.get_running_app()
        app.go("signin")
        app.screen("signin").set_mode("password")
