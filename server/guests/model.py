"""Pure rules about guests: how a name is shown. No I/O."""

from __future__ import annotations

__all__ = ["display_name"]


def display_name(first_name: str, last_name: str, *, full: bool) -> str:
    """The name staff see: "Anna S." for baristas and shift leads, the full name for managers."""
    first, last = first_name.strip(), last_name.strip()
    if full:
        return f"{first} {last}".strip() or "Guest"
    if not first:
        return f"{last[:1]}." if last else "Guest"
    return f"{first} {last[:1]}." if last else first
