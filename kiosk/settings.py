"""Every bound the kiosk works within, named with its unit (STYLE habit 6).

These are code defaults, not user preferences; preferences live in :mod:`kiosk.config`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KioskSettings"]


@dataclass(frozen=True, slots=True)
class KioskSettings:
    # HTTP: a counter cannot wait long, so fail fast and fall back to the outbox.
    http_timeout_s: float = 5.0
    http_connect_timeout_s: float = 2.0
    # How often the connection banner re-checks /healthz.
    health_interval_s: float = 3.0
    # How often pending outbox entries are retried while the server is reachable.
    outbox_retry_s: float = 5.0
    outbox_batch_size: int = 50
    # Entries still failing after this many attempts are kept but shown as stuck.
    outbox_max_attempts: int = 1000
    # Live queue WebSocket: reconnect backoff and keepalive that detects a stale socket.
    ws_backoff_initial_s: float = 0.5
    ws_backoff_max_s: float = 30.0
    ws_ping_interval_s: float = 10.0
    ws_ping_timeout_s: float = 10.0
    ws_open_timeout_s: float = 5.0
    # Scanning: the same code seen again within this window is the same scan.
    scan_dedupe_s: float = 3.0
    # Camera frames are decoded at most this often; frames in between are dropped.
    decode_interval_s: float = 0.15
    # Keyboard-wedge scanners type a whole code in well under this gap between keys.
    wedge_max_gap_s: float = 0.5
    wedge_min_length: int = 3
    max_code_length: int = 200
    # How long a new-order alert stays highlighted.
    order_alert_s: float = 8.0
