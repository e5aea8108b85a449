"""Loads a screen's ``.kv`` file once per process, next to its module."""

from __future__ import annotations

from pathlib import Path

from kivy.lang import Builder

__all__ = ["load_kv"]


def load_kv(module_file: str) -> None:
    """Load ``<module>.kv``; safe to call again (Builder refuses nothing, so we guard)."""
    path = str(Path(module_file).with_suffix(".kv"))
    if path not in Builder.files:
        Builder.load_file(path)
