"""Drive the real kiosk app under a virtual display against the real server (``live_server``).

Kivy reads its environment once, at import, so everything is set here before any test module
imports it: offscreen SDL when there is no X display (Xvfb is used when DISPLAY is set), no
Kivy argument parsing, no config or log files, and a KIVY_HOME inside the work tree.

Without OpenGL (libGL/libEGL) every GUI test is skipped with the command that fixes it.
"""

from __future__ import annotations

import ctypes.util
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.seed.demo import DEMO_PASSWORD
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
KIVY_HOME = ROOT / ".kivy" / "gui-tests"  # .kivy/ is gitignored
# Screenshots go to a temporary folder unless this names one: the tests must not rewrite
# tracked files. `REGULARS_SCREENSHOTS_DIR=docs/screenshots python3 tests/run.py tests/gui`
# refreshes the README's pictures.
SCREENSHOTS_ENV = "REGULARS_SCREENSHOTS_DIR"

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
for _name, _value in {
    "KIVY_NO_ARGS": "1",
    "KIVY_NO_CONFIG": "1",
    "KIVY_NO_FILELOG": "1",
    "KIVY_LOG_MODE": "PYTHON",
    "KCFG_KIVY_LOG_LEVEL": "warning",
    "KIVY_CLIPBOARD": "sdl2",
    "KIVY_WINDOW": "sdl2",
    "KIVY_HOME": str(KIVY_HOME),
    "KCFG_GRAPHICS_WIDTH": "1280",
    "KCFG_GRAPHICS_HEIGHT": "800",
}.items():
    os.environ.setdefault(_name, _value)
KIVY_HOME.mkdir(parents=True, exist_ok=True)

INSTALL_GL = "apt-get install -y --no-install-recommends libgl1 libegl1"


def _missing_gl() -> str | None:
    missing = [lib for lib in ("GL", "EGL") if ctypes.util.find_library(lib) is None]
    if missing:
        libs = ", ".join(f"lib{m}" for m in missing)
        return f"GUI tests need OpenGL ({libs} not found): run `{INSTALL_GL}`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing_gl()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("gui") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


# -- the server -------------------------------------------------------------------------


@pytest.fixture
def kiosk_server(live_server: LiveServer) -> Iterator[LiveServer]:
    """The session's live server, running again when the test ends (a test may stop it)."""
    yield live_server
    if not _healthy(live_server.base_url):
        live_server.start()


def _healthy(base_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- the app ----------------------------------------------------------------------------


class KioskDriver:
    """Runs frames of the real app and acts like a barista (taps, a scanner, a camera)."""

    def __init__(self, app: Any, server: Any, screenshots: Path) -> None:
        from kivy.base import EventLoop
        from kivy.core.window import Window

        self.app = app
        self.server = server
        self.screenshots = screenshots
        self._idle = EventLoop.idle
        self.window = Window

    def pump(self, until: Callable[[], bool], timeout_s: float = 15.0, what: str = "") -> None:
        """Advance frames until ``until()`` is true; fails with what is on screen if not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._idle()
            if until():
                return
            time.sleep(0.01)
        app = self.app
        raise AssertionError(
            f"timed out waiting for {what or until}: screen={app.screens.current!r} "
            f"notice={app.notice_title!r} {app.notice_detail!r} banner={app.banner_text!r}"
        )

    def frames(self, count: int = 5) -> None:
        for _ in range(count):
            self._idle()
            time.sleep(0.01)

    def tap(self, button: Any) -> None:
        """Press and release a button as a finger would (refuses disabled buttons)."""
        assert not button.disabled, f"button {getattr(button, 'text', button)!r} is disabled"
        button.dispatch("on_press")
        button.dispatch("on_release")
        self.frames(2)

    def scanner_types(self, text: str) -> None:
        """A keyboard-wedge scanner: key-down, text, key-up per character, then Enter."""
        for ch in text:
            key = ord(ch.lower()) if ch.isascii() else 0
            self.window.dispatch("on_key_down", key, 0, ch, [])
            self.window.dispatch("on_textinput", ch)
            self.window.dispatch("on_key_up", key, 0)
        self.window.dispatch("on_key_down", 13, 40, None, [])
        self.window.dispatch("on_key_up", 13, 40)
        self.frames(2)

    def button(self, screen: str, text: str) -> Any:
        """The button on ``screen`` whose label starts with ``text``."""
        from kivy.uix.button import Button

        for widget in self.app.screen(screen).walk():
            if isinstance(widget, Button) and str(widget.text).startswith(text):
                return widget
        raise AssertionError(f"no button {text!r} on {screen}")

    def sign_in(self) -> None:
        email, password = "barista@demo.regulars.test", DEMO_PASSWORD
        self.app.go("signin")
        screen = self.app.screen("signin")
        screen.set_mode("password")
        self.frames(2)
        screen.ids.email.text = email
        screen.ids.secret.text = password
        self.tap(self.button("signin", "Sign in"))
        self.pump(lambda: self.app.screens.current == "scan", what="sign-in")

    def size(self, width: int, height: int) -> None:
        """Lay the app out for another tablet size."""
        self.window.size = (width, height)
        self.frames(6)
        assert tuple(self.app.root.size) == (width, height)

    def screenshot(self, name: str) -> Path:
        """Save the app as <name>.png in the session's screenshot folder.

        Rendered through an FBO of the root widget's size rather than read from the window:
        the offscreen SDL framebuffer keeps its first size when the window is resized.
        """
        self.frames(4)
        target = self.screenshots / f"{name}.png"
        self.app.root.export_to_png(str(target))
        assert target.stat().st_size > 0, f"{target} is empty"
        return target


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the GUI tests save what they saw: $REGULARS_SCREENSHOTS_DIR, else a temp folder."""
    named = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(named).resolve() if named else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def kiosk(kiosk_server: Any, tmp_path: Path, screenshots: Path) -> Iterator[KioskDriver]:
    """A fresh kiosk app (own data dir and outbox) pointed at the live server."""
    from kivy.app import App
    from kivy.core.window import Window

    from kiosk.app import KioskApp
    from kiosk.config import KioskConfig
    from kiosk.settings import KioskSettings

    # No location yet: signing in picks the staff member's first location, as on a new tablet.
    config = KioskConfig(
        data_dir=tmp_path / "kiosk", server_url=kiosk_server.base_url, camera="feed"
    )
    # Short intervals so tests see reconnects quickly; behaviour is the same as production.
    settings = KioskSettings(
        health_interval_s=0.3, outbox_retry_s=0.5, ws_backoff_initial_s=0.2, ws_backoff_max_s=1.0
    )
    app = KioskApp(config, settings, sound=False)
    Window.size = (1280, 800)
    app._run_prepare()
    driver = KioskDriver(app, kiosk_server, screenshots)
    driver.frames(5)
    try:
        yield driver
    finally:
        # As App.stop() does, in this order: root off the window, last frames, on_stop, and
        # no running app. kv's `app` proxy caches the app it first resolves and forgets it
        # only on that app's on_stop; a kv rule evaluated in a frame *after* on_stop cached
        # this stopped app again, and a later test's buttons called it ("Event loop is
        # closed", seen once in CI).
        Window.unbind(on_keyboard=app._on_keyboard_settings)
        if app.root is not None:
            Window.remove_widget(app.root)
        driver.frames(2)
        app.dispatch("on_stop")
        App._running_app = None
