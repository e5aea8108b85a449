"""Scan sources: where guest codes come from (camera, keyboard-wedge scanner, test feed).

Every source hands codes to one callback, ``on_code(code, origin)``, on the UI thread. Camera
and test-feed frames share :class:`~kiosk.scanner.decode.FramePipeline`, so a test that feeds
frames exercises the exact decode path a camera uses.
"""

from kiosk.scanner.base import OnCode, ScanSource
from kiosk.scanner.decode import FramePipeline, decode_qr, rgba_to_gray
from kiosk.scanner.feed import FeedSource
from kiosk.scanner.wedge import KeyboardWedge, WedgeBuffer

__all__ = [
    "FeedSource",
    "FramePipeline",
    "KeyboardWedge",
    "OnCode",
    "ScanSource",
    "WedgeBuffer",
    "decode_qr",
    "rgba_to_gray",
]
