"""What the deploy tests share: where the files are and which REGULARS_* names exist."""

from __future__ import annotations

import tomllib
from pathlib import Path

from server.settings import PREFIX, Settings

__all__ = ["DEPLOY", "ROOT", "is_setting", "locked_version"]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def is_setting(name: str) -> bool:
    """A REGULARS_* name the server knows; it refuses to start on any other (settings.py)."""
    return name.startswith(PREFIX) and name[len(PREFIX) :].lower() in Settings.__struct_fields__


def locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(str(p["version"]) for p in lock["package"] if p["name"] == package)
