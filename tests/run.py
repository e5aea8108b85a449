#!/usr/bin/env python3
"""Install what the test suite needs and run all of it: lint, format, types, every test layer.

Standard library only, so it runs on a fresh machine with nothing but Python: it creates
.venv, installs the uv that uv.lock pins, refuses a lock that no longer matches
pyproject.toml, installs exactly the locked packages (the project with its dev extra), installs
the OpenGL libraries the kiosk's GUI tests need (with apt-get when run as root; otherwise it
says what to install and the GUI layer skips with that message), then runs ruff, the
import-layer contracts, mypy and pytest. Extra arguments go to pytest.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
UV = VENV / "bin" / "uv"
LOCK = ROOT / "uv.lock"
REFRESH_LOCK = ".venv/bin/uv lock"
GUI_PACKAGES = ["libgl1", "libegl1", "libmtdev1", "xvfb", "xauth"]
XVFB = ["xvfb-run", "-a", "--server-args=-screen 0 1920x1200x24"]


def run(*command: str | Path, check: bool = False) -> int:
    print("+", " ".join(str(part) for part in command), flush=True)
    code = subprocess.run([str(part) for part in command], cwd=ROOT).returncode
    if check and code != 0:
        sys.exit(code)
    return code


def locked_version(name: str) -> str:
    """The version of ``name`` that uv.lock pins (uv itself is locked like any package)."""
    lock = tomllib.loads(LOCK.read_text())
    for package in lock["package"]:
        if package["name"] == name:
            return str(package["version"])
    sys.exit(f"uv.lock pins no {name!r}: refresh it with `{REFRESH_LOCK}`")


def uv_version() -> str | None:
    if not UV.exists():
        return None
    out = subprocess.run([UV, "--version"], capture_output=True, text=True).stdout
    return out.split()[1] if out.startswith("uv ") else None


def install() -> None:
    """Make .venv hold exactly what uv.lock says, or stop with the command that fixes it."""
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    wanted = locked_version("uv")
    if uv_version() != wanted:
        run(PYTHON, "-m", "pip", "install", "--quiet", f"uv=={wanted}", check=True)
    if subprocess.run([UV, "lock", "--check", "--quiet"], cwd=ROOT).returncode != 0:
        print(
            "uv.lock does not match pyproject.toml (a dependency changed and the lock was not "
            f"refreshed): run `{REFRESH_LOCK}` and commit uv.lock with the change",
            flush=True,
        )
        sys.exit(1)
    run(UV, "sync", "--locked", "--quiet", "--extra", "dev", check=True)


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
    checks: dict[str, list[str | Path]] = {
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
        # The import contracts in pyproject.toml ([tool.importlinter]): DESIGN §6's layers.
        "import layers": [VENV / "bin" / "lint-imports"],
        "mypy": ["-m", "mypy"],
    }
    for name, args in checks.items():
        command = args if name == "import layers" else [PYTHON, *args]
        if run(*command) != 0:
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
