"""Scan sources without Kivy: QR decode of camera-sized frames, the frame pipeline, the wedge."""

from __future__ import annotations

import concurrent.futures
import random
import threading
from collections.abc import Callable

import numpy as np
import qrcode
from PIL import Image, ImageFilter

from kiosk.scanner import FeedSource, FramePipeline, KeyboardWedge, WedgeBuffer, decode_qr
from kiosk.scanner.decode import rgba_to_gray
from shared import qr

SECRET = b"0123456789abcdefghij"


def camera_frame(
    text: str, angle: float = 12.0, size: tuple[int, int] = (1280, 720)
) -> Image.Image:
    """A phone screen showing ``text`` as a QR, tilted, on a noisy 1280×720 background."""
    code = (
        qrcode.make(text, box_size=6, border=4)
        .convert("L")
        .rotate(angle, expand=True, fillcolor=255)
    )
    rng = np.random.default_rng(7)
    noise = rng.normal(120, 35, (size[1], size[0])).clip(0, 255).astype(np.uint8)
    frame = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.2))
    frame.paste(code, (size[0] // 2 - code.width // 2 + 90, size[1] // 2 - code.height // 2))
    return frame.convert("RGB")


def sync_deliver(fn: Callable[[], None]) -> None:
    fn()


def test_a_tilted_qr_in_a_noisy_camera_frame_decodes() -> None:
    code = qr.generate("ABCDEFGHIJKLMNOP", SECRET)
    gray = np.asarray(camera_frame(code).convert("L"))
    assert decode_qr(gray) == [code]


def test_a_frame_without_a_code_decodes_to_nothing() -> None:
    noise = np.random.default_rng(1).integers(0, 255, (720, 1280), dtype=np.uint8)
    assert decode_qr(noise) == []


def test_rgba_textures_are_converted_to_gray_and_flipped() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, :, :3] = 255  # top row white
    gray = rgba_to_gray(rgba.tobytes(), 3, 2, flip=True)
    assert gray.shape == (2, 3) and gray.dtype == np.uint8
    assert gray[1].tolist() == [255, 255, 255] and gray[0].tolist() == [0, 0, 0]


def test_fed_frames_go_through_the_pipeline_and_repeat_codes_are_reported_once() -> None:
    code = qr.generate("ABCDEFGHIJKLMNOP", SECRET)
    seen: list[tuple[str, str]] = []
    previews: list[np.ndarray] = []
    delivered = threading.Event()

    def on_code(text: str, origin: str) -> None:
        seen.append((text, origin))
        delivered.set()

    pipeline = FramePipeline(on_code, sync_deliver, interval_s=0.0, dedupe_s=60.0)
    feed = FeedSource(pipeline, on_preview=previews.append)
    frame = camera_frame(code)
    futures = [feed.feed(frame), feed.feed(frame)]
    concurrent.futures.wait([f for f in futures if f is not None], timeout=10)
    pipeline.close()
    assert seen == [(code, "feed")]
    assert previews[0].shape == (720, 1280, 3)


def test_camera_frames_are_dropped_while_the_decoder_is_busy() -> None:
    clock = [0.0]
    pipeline = FramePipeline(lambda *_: None, sync_deliver, interval_s=0.15, clock=lambda: clock[0])
    blank = np.zeros((720, 1280), dtype=np.uint8)
    first = pipeline.offer(blank)
    assert first is not None
    assert pipeline.offer(blank) is None  # too soon, and maybe still busy
    first.result(timeout=5)
    clock[0] = 1.0
    assert pipeline.offer(blank) is not None
    pipeline.close()


def test_wedge_burst_plus_enter_is_a_code_and_slow_typing_is_not() -> None:
    now = [0.0]
    buffer = WedgeBuffer(max_gap_s=0.5, min_length=3, clock=lambda: now[0])
    for ch in "RG1:ABC":
        now[0] += 0.01
        buffer.text(ch)
    assert buffer.enter() == "RG1:ABC"

    buffer.text("x")
    now[0] += 2.0  # someone leaned on the keyboard, then a real scan follows
    for ch in "4711":
        now[0] += 0.01
        buffer.text(ch)
    assert buffer.enter() == "4711"

    buffer.text("ab")
    assert buffer.enter() is None  # too short
    buffer.text("abcd")
    now[0] += 1.0
    assert buffer.enter() is None  # Enter long after the burst


class FakeWindow:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., object]] = {}

    def bind(self, **handlers: Callable[..., object]) -> None:
        self.handlers.update(handlers)

    def unbind(self, **handlers: Callable[..., object]) -> None:
        for name in handlers:
            self.handlers.pop(name, None)


def test_keyboard_wedge_listens_only_when_accepted() -> None:
    window, codes = FakeWindow(), []
    accepting = [True]
    wedge = KeyboardWedge(window, lambda c, o: codes.append((c, o)), lambda: accepting[0])
    wedge.start()
    for ch in "12345678":
        window.handlers["on_textinput"](window, ch)
    assert window.handlers["on_key_down"](window, 13, 40, None, []) is True
    assert codes == [("12345678", "wedge")]

    accepting[0] = False  # e.g. a text field has focus: it gets the keys instead
    for ch in "99999":
        window.handlers["on_textinput"](window, ch)
    assert window.handlers["on_key_down"](window, 13, 40, None, []) is False
    wedge.stop()
    assert window.handlers == {}


def test_random_garbage_frames_never_raise() -> None:
    rng = random.Random(3)
    for _ in range(5):
        w, h = rng.randint(8, 320), rng.randint(8, 240)
        frame = np.frombuffer(rng.randbytes(w * h), dtype=np.uint8).reshape(h, w)
        assert isinstance(decode_qr(frame), list)
