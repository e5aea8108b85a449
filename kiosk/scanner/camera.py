"""A real camera through Kivy's camera providers (OpenCV, GStreamer, Android, Picamera).

Frames are read back from the preview texture at most every ``interval_s`` and decoded on the
pipeline's worker thread. Without a provider or device, :meth:`start` raises
:class:`CameraUnavailable` and the scan screen offers the scanner and manual entry instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kiosk.scanner.decode import FramePipeline, rgba_to_gray

__all__ = ["CameraUnavailable", "KivyCameraSource"]

log = logging.getLogger("kiosk.scanner.camera")


class CameraUnavailable(RuntimeError):
    """No camera provider or no device at this index."""


class KivyCameraSource:
    name = "camera"

    def __init__(
        self,
        pipeline: FramePipeline,
        on_texture: Callable[[Any], None],
        index: int = 0,
        resolution: tuple[int, int] = (1280, 720),
    ) -> None:
        self._pipeline = pipeline
        self._on_texture = on_texture
        self.index = index
        self.resolution = resolution
        self._camera: Any = None

    def start(self) -> None:
        """Open the camera; raises CameraUnavailable with the reason if it cannot."""
        if self._camera is not None:
            return
        from kivy.core.camera import Camera as CoreCamera  # Kivy only where a camera is used

        if CoreCamera is None:
            raise CameraUnavailable("no camera provider (install opencv-python-headless<5)")
        try:
            camera = CoreCamera(index=self.index, resolution=self.resolution, stopped=True)
            camera.bind(on_texture=self._on_frame)
            camera.start()
        except Exception as exc:  # providers raise assorted errors for a missing device
            raise CameraUnavailable(f"camera {self.index}: {exc}") from exc
        self._camera = camera

    def stop(self) -> None:
        if self._camera is not None:
            self._camera.stop()
            self._camera.unbind(on_texture=self._on_frame)
            self._camera = None

    def _on_frame(self, *_args: Any) -> None:
        texture = self._camera.texture if self._camera else None
        if texture is None:
            return
        self._on_texture(texture)
        if not self._pipeline.ready():
            return  # reading pixels back from the GPU is the costly part: skip it too
        width, height = texture.size
        gray = rgba_to_gray(texture.pixels, width, height, flip=True)
        self._pipeline.offer(gray, origin="camera")
