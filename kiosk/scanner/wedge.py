"""Keyboard-wedge barcode scanners: USB/Bluetooth devices that type the code and press Enter.

:class:`WedgeBuffer` is the Kivy-free rule; :class:`KeyboardWedge` binds it to a Kivy window
(duck-typed, so this module imports no Kivy). Keys typed slowly (a person leaning on the
keyboard) are discarded by the inter-key gap rule instead of becoming a bogus scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kiosk.scanner.base import OnCode

__all__ = ["ENTER_KEYS", "KeyboardWedge", "WedgeBuffer"]

# SDL key codes for Return and keypad Enter as Kivy reports them.
ENTER_KEYS = frozenset({13, 271})


class WedgeBuffer:
    """Collects characters typed in a burst; Enter yields the code."""

    def __init__(
        self,
        max_gap_s: float = 0.5,
        min_length: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_gap_s = max_gap_s
        self.min_length = min_length
        self._clock = clock
        self._chars: list[str] = []
        self._last = 0.0

    def text(self, chars: str) -> None:
        """Add typed characters; a pause longer than ``max_gap_s`` starts a new code."""
        now = self._clock()
        if self._chars and now - self._last > self.max_gap_s:
            self._chars.clear()
        self._chars.append(chars)
        self._last = now

    def enter(self) -> str | None:
        """End of a code: returns it if it is long enough and recent, else None; resets."""
        code = "".join(self._chars).strip()
        stale = self._clock() - self._last > self.max_gap_s
        self._chars.clear()
        if stale or len(code) < self.min_length:
            return None
        return code


class KeyboardWedge:
    """Listens to a Kivy window's keys while ``accept()`` says the scan screen wants codes."""

    name = "wedge"

    def __init__(
        self,
        window: Any,
        on_code: OnCode,
        accept: Callable[[], bool],
        buffer: WedgeBuffer | None = None,
    ) -> None:
        self._window = window
        self._on_code = on_code
        self._accept = accept
        self.buffer = buffer or WedgeBuffer()
        self.running = False

    def start(self) -> None:
        if not self.running:
            self._window.bind(on_textinput=self._on_text, on_key_down=self._on_key_down)
            self.running = True

    def stop(self) -> None:
        if self.running:
            self._window.unbind(on_textinput=self._on_text, on_key_down=self._on_key_down)
            self.running = False

    def _on_text(self, _window: Any, text: str) -> None:
        if self._accept():
            self.buffer.text(text)

    def _on_key_down(self, _window: Any, key: int, *_args: Any) -> bool:
        if key not in ENTER_KEYS or not self._accept():
            return False
        code = self.buffer.enter()
        if code is None:
            return False
        self._on_code(code, "wedge")
        return True
