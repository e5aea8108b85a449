"""``python -m kiosk`` / ``regulars-kiosk``: start the staff kiosk.

Kivy reads its environment at import time, so arguments are parsed and the environment is set
before anything imports Kivy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kiosk.config import DEMO_SERVER_URL, KioskConfig, default_data_dir

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regulars-kiosk", description="Regulars staff kiosk (scan, accrue, redeem, queue)."
    )
    parser.add_argument("--server", help="API base URL, e.g. http://127.0.0.1:8000 (saved)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"sign in to a local `regulars dev` stack ({DEMO_SERVER_URL}) as the demo barista",
    )
    parser.add_argument("--data-dir", type=Path, help="config and outbox directory")
    parser.add_argument("--camera", help="'auto', 'none', 'feed' or a camera index (saved)")
    parser.add_argument("--size", default="1280x800", help="window size WxH (default 1280x800)")
    parser.add_argument("--fullscreen", action="store_true", help="fill the screen (kiosk mode)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return parser


def _kivy_env(data_dir: Path, size: str, fullscreen: bool) -> None:
    width, _, height = size.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise SystemExit(f"--size must look like 1280x800, not {size!r}")
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # our flags, not Kivy's
    os.environ.setdefault("KIVY_HOME", str(data_dir / "kivy"))
    os.environ.setdefault("KIVY_NO_FILELOG", "1")
    os.environ.setdefault("KCFG_KIVY_LOG_LEVEL", "warning")
    # Kivy otherwise takes over the root logger at DEBUG (and httpx's wire logs with it).
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
    # SDL's clipboard: Kivy's default probes xclip/xsel and prints tracebacks without them.
    os.environ.setdefault("KIVY_CLIPBOARD", "sdl2")
    os.environ.setdefault("KCFG_GRAPHICS_WIDTH", width)
    os.environ.setdefault("KCFG_GRAPHICS_HEIGHT", height)
    if fullscreen:
        os.environ.setdefault("KCFG_GRAPHICS_FULLSCREEN", "auto")
    # Touch tablets: no red multitouch-emulation dots on right click.
    os.environ.setdefault("KCFG_INPUT_MOUSE", "mouse,disable_multitouch")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the saved config, run the app until the window closes."""
    args = _parser().parse_args(argv)
    if args.data_dir is not None:
        data_dir = args.data_dir
    elif args.demo and "REGULARS_KIOSK_DATA_DIR" not in os.environ:
        data_dir = Path(".regulars") / "kiosk"  # beside the `regulars dev` data, gitignored
    else:
        data_dir = default_data_dir()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    server = args.server or (DEMO_SERVER_URL if args.demo else None)
    config = KioskConfig.load(data_dir, server_url=server, camera=args.camera)
    config.save()
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        if not os.environ.get("SDL_VIDEODRIVER"):
            print(
                "regulars-kiosk: no DISPLAY; run under a desktop, `xvfb-run`, or set "
                "SDL_VIDEODRIVER=offscreen to render without one.",
                file=sys.stderr,
            )
    _kivy_env(data_dir, args.size, args.fullscreen)

    from kiosk.app import KioskApp  # Kivy is imported only now, with the environment set

    KioskApp(config, demo=args.demo).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
