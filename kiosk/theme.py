"""Colours and sizes shared by every ``.kv`` file (``#:import theme kiosk.theme``).

Sized for a landscape tablet read at arm's length: body text 20sp, key figures 48sp and up,
every touch target at least 64dp tall (above the 48dp minimum, for hurried thumbs).
"""

from __future__ import annotations

__all__ = [
    "ACCENT",
    "BG",
    "INK",
    "MUTED",
    "PANEL",
    "TONES",
    "TOUCH_DP",
    "tone_colour",
]

RGBA = tuple[float, float, float, float]

BG: RGBA = (0.96, 0.94, 0.91, 1)  # warm paper: a café, not a spreadsheet
PANEL: RGBA = (1, 1, 1, 1)
INK: RGBA = (0.13, 0.11, 0.10, 1)
MUTED: RGBA = (0.40, 0.37, 0.34, 1)
ACCENT: RGBA = (0.36, 0.23, 0.15, 1)  # coffee
ACCENT_LIGHT: RGBA = (0.89, 0.84, 0.78, 1)
DANGER: RGBA = (0.72, 0.16, 0.16, 1)
TONES: dict[str, RGBA] = {
    "success": (0.11, 0.52, 0.27, 1),
    "warning": (0.80, 0.47, 0.02, 1),
    "error": (0.72, 0.16, 0.16, 1),
    "info": (0.17, 0.38, 0.66, 1),
}
TOUCH_DP = 64


def tone_colour(tone: str) -> RGBA:
    """The background colour for a notice or banner tone (unknown tones read as info)."""
    return TONES.get(tone, TONES["info"])
