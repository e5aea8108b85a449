#!/usr/bin/env python3
"""Install what the test suite needs and run all of it: lint, format, types, every test layer.

Standard library only, so it runs on a fresh machine with nothing but Python: it creates
.venv, installs the project with its dev extra, installs the OpenGL libraries the kiosk's GUI
tests need (with apt-get when run as root; otherwise it says what to install and the GUI
layer skips with that message), then runs ruff, mypy and pytest. Extra arguments go to pytest.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
GUI_PACKAGES = ["libgl1", "libegl1", "libmtdev1", "xvfb", "xauth"]
XVFB = ["xvfb-run", "-a", "--server-args=-screen 0 1920x1200x24"]


def run(*command: str | Path, check: bool = False) -> int:
    print("+", " ".join(str(part) for part in command), flush=True)
    code = subprocess.run([str(part) for part in command], cwd=ROOT).returncode
    if check and code != 0:
        sys.exit(code)
    return code


def install() -> None:
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip", check=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]", check=True)


def gui_libraries() -> None:
    missing = [name for name in ("GL", "EGL") if ctypes.util.find_library(name) is None]
    if shutil.which("xvfb-run") is None:
        missing.append("xvfb-run")
    if not missing:
        return
    if os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *GUI_PACKAGES],
            check=True,
            env=env,
        )
    else:
        print(
            f"GUI tests need {missing}: without OpenGL they are skipped, without Xvfb they "
            "render offscreen; "
            f"install them with: sudo apt-get install {' '.join(GUI_PACKAGES)}",
            flush=True,
        )


def main() -> int:
    install()
    gui_libraries()
    failures = []
    checks = {
        "ruff check": ["-m", "ruff", "check", "server", "shared", "kiosk", "loadtests", "tests"],
        "ruff format": [
            "-m",
            "ruff",
            "format",
            "--check",
            "server",
            "shared",
            "kiosk",
            "loadtests",
            "tests",
        ],
        "mypy": ["-m", "mypy"],
    }
    for name, args in checks.items():
        if run(PYTHON, *args) != 0:
            failures.append(name)
    # The kiosk's GUI tests run under Xvfb when it is there (else SDL renders offscreen).
    display = XVFB if shutil.which("xvfb-run") and not os.environ.get("DISPLAY") else []
    code = run(*display, PYTHON, "-m", "pytest", *sys.argv[1:])
    if code == 5:
        print("pytest collected no tests: that is a failure, not a pass", flush=True)
        code = 1
    if code != 0:
        failures.append("pytest")
    if failures:
        print("FAILED: " + ", ".join(failures), flush=True)
        return 1
    print("all checks and tests passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
