"""The adapter shape every scan source follows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

__all__ = ["OnCode", "Origin", "ScanSource"]

Origin = Literal["camera", "wedge", "feed", "manual"]
OnCode = Callable[[str, Origin], None]


class ScanSource(Protocol):
    """A source of scanned codes; ``start``/``stop`` are idempotent."""

    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
