"""The test (and demo) scan source: image frames handed in by code, decoded like camera frames."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import numpy as np
from PIL import Image

from kiosk.scanner.decode import FramePipeline

__all__ = ["FeedSource"]


class FeedSource:
    """Feeds frames through the camera's :class:`FramePipeline` and preview callback."""

    name = "feed"

    def __init__(
        self,
        pipeline: FramePipeline,
        on_preview: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._on_preview = on_preview
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def feed(self, frame: np.ndarray | Image.Image) -> concurrent.futures.Future[list[str]] | None:
        """Show ``frame`` (RGB, RGBA or gray; array or PIL) as the preview and decode it.

        Unlike live camera frames, a fed frame is never dropped: it waits for a busy decoder.
        """
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
        if self._on_preview is not None:
            self._on_preview(np.asarray(image.convert("RGB")))
        gray = np.asarray(image.convert("L"))
        return self._pipeline.offer(gray, origin="feed", wait=True)
