"""The scan screen: camera preview, keyboard-wedge scanner and manual entry."""

from __future__ import annotations

from kivy.app import App
from kivy.graphics.texture import Texture
from kivy.properties import BooleanProperty, ObjectProperty, StringProperty
from kivy.uix.screenmanager import Screen

from kiosk.screens._kv import load_kv

__all__ = ["ScanScreen"]

load_kv(__file__)


class ScanScreen(Screen):
    preview = ObjectProperty(None, allownone=True)
    camera_state = StringProperty("")
    looking_up = BooleanProperty(False)

    def show_preview(self, texture: Texture) -> None:
        self.preview = texture
        self.ids.preview.canvas.ask_update()

    def show_camera_state(self, text: str) -> None:
        self.camera_state = text

    def show_looking_up(self, busy: bool) -> None:
        self.looking_up = busy

    def submit_manual(self) -> None:
        field = self.ids.manual
        code, field.text = field.text, ""
        field.focus = False
        if code.strip():
            App.get_running_app().on_code(code, "manual")
