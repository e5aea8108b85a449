"""Thin Kivy screens: one ``.kv`` layout each, behaviour delegated to the app and session."""

from kiosk.screens.approval import ApprovalPopup
from kiosk.screens.guest import GuestScreen
from kiosk.screens.pairing import PairingScreen
from kiosk.screens.queue import QueueScreen
from kiosk.screens.scan import ScanScreen
from kiosk.screens.settings import SettingsScreen
from kiosk.screens.signin import SignInScreen

__all__ = [
    "ApprovalPopup",
    "GuestScreen",
    "PairingScreen",
    "QueueScreen",
    "ScanScreen",
    "SettingsScreen",
    "SignInScreen",
]
