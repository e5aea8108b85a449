"""Process-level tuning for long-running server workers."""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """Collect once, then freeze every object alive now (the app, its routes, types, caches
    and pools) so that later collections never traverse them again.

    Frozen objects are never freed: call this once per process, after start-up. Objects
    created later are collected as usual. Measured at 900 checkouts/s on one worker: p99
    138 → 56 ms and 53 → 19 ms in two paired runs (docs/PERFORMANCE.md).
    """
    gc.collect()
    gc.freeze()
