"""The notifier port: how a one-time code reaches the guest. Dev logs it; tests record it."""

from __future__ import annotations

import logging
from typing import Protocol

__all__ = ["LogNotifier", "Notifier", "RecordingNotifier"]

log = logging.getLogger("regulars.notifier")


class Notifier(Protocol):
    async def send_code(self, phone_e164: str, code: str) -> None: ...


class LogNotifier:
    """Development notifier: the code goes to the log, where the developer can read it."""

    async def send_code(self, phone_e164: str, code: str) -> None:
        log.warning("one-time code for %s: %s", phone_e164, code)


class RecordingNotifier:
    """Keeps the last code per phone (tests and load-test set-up read it)."""

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}

    async def send_code(self, phone_e164: str, code: str) -> None:
        self.codes[phone_e164] = code
