"""The install commands and the lock agree: the README bootstraps the uv that uv.lock pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_installs_the_uv_that_the_lock_pins() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {package["name"]: package["version"] for package in lock["package"]}
    readme = (ROOT / "README.md").read_text()
    pinned = re.findall(r"pip install -q uv==([0-9.]+)", readme)
    assert pinned, "the README's install command no longer pins uv"
    assert set(pinned) == {locked["uv"]}


def test_every_install_command_syncs_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "uv sync --locked" in first_block
    assert "tests/run.py" in first_block
