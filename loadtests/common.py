"""Shared pieces of the load suites: the setup file, idempotency keys, order bodies.

Nothing here imports ``server``: the Locust suites talk to the API over HTTP only, so they run
against a staging URL from any machine that has the setup file.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "SetupData",
    "choose_location",
    "env_float",
    "env_int",
    "load_setup",
    "new_key",
    "order_body",
    "pickup_at",
    "run_on_uvloop",
]

# Paths the optional user classes need; a class is disabled when the server lacks one of them.
BARISTA_PATHS = (
    "/v1/kiosk/scan",
    "/v1/guests/{guest_id}/accruals",
    "/v1/guests/{guest_id}/redemptions",
)
POS_PATHS = ("/v1/pos/receipts",)


T = TypeVar("T")


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop where it is installed (a dependency everywhere but
    Windows), the loop `regulars serve` runs: a generator's own CPU per request is part of
    what it reports."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


def new_key() -> str:
    """A fresh, time-ordered Idempotency-Key (UUIDv7 layout): one per intended operation."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Guest:
    id: str
    token: str
    phone: str = ""
    public_id: str = ""
    qr_secret_hex: str = ""


@dataclass
class SetupData:
    """What `python -m loadtests.setup_data` writes: guests with tokens and points, staff
    tokens, and the location the suites order at."""

    base_url: str
    location_id: str
    guests: list[Guest]
    staff: dict[str, str] = field(default_factory=dict)
    points_per_guest: int = 0
    expires_at: str | None = None
    # Two available items of the location's menu, for generators that build checkouts.
    items: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "base_url": self.base_url,
                "location_id": self.location_id,
                "points_per_guest": self.points_per_guest,
                "expires_at": self.expires_at,
                "staff": self.staff,
                "guests": [g.__dict__ for g in self.guests],
                "items": self.items,
            },
            indent=1,
        )


def load_setup(path: str | os.PathLike[str] | None = None) -> SetupData:
    """The setup file named by ``path`` or ``$REGULARS_LOADTEST_DATA``."""
    path = path or os.environ.get("REGULARS_LOADTEST_DATA") or "loadtests/reports/setup.json"
    raw = json.loads(Path(path).read_text())
    guests = [Guest(**g) for g in raw["guests"]]
    if not guests:
        raise ValueError(f"{path} has no guests; run python -m loadtests.setup_data first")
    expires = raw.get("expires_at")
    if expires and datetime.fromisoformat(expires) < datetime.now(UTC) + timedelta(minutes=1):
        raise ValueError(f"the tokens in {path} expired at {expires}; run setup_data again")
    return SetupData(
        base_url=raw.get("base_url", ""),
        location_id=raw["location_id"],
        guests=guests,
        staff=raw.get("staff", {}),
        points_per_guest=raw.get("points_per_guest", 0),
        items=raw.get("items", []),
        expires_at=expires,
    )


def choose_location(locations: list[dict[str, Any]], wanted: str | None = None) -> dict[str, Any]:
    """The location to order at: ``wanted`` (id or name part), else one open around the clock
    (the demo's station counter), else the first open one."""
    if wanted:
        for loc in locations:
            if wanted in (loc["id"], loc.get("name")) or wanted.lower() in loc["name"].lower():
                return loc
        raise ValueError(f"no location matches {wanted!r}")

    def always(loc: dict[str, Any]) -> bool:
        hours = loc.get("opening_hours") or {}
        return len(hours) == 7 and all(v == [["00:00", "24:00"]] for v in hours.values())

    for pick in (always, lambda loc: bool(loc.get("open_now"))):
        for loc in locations:
            if pick(loc):
                return loc
    raise ValueError("no open location; pass REGULARS_LOADTEST_LOCATION")


def pickup_at(location: dict[str, Any], spread_h: float, rng: random.Random) -> str | None:
    """A pickup time spread over the next ``spread_h`` hours (None: the earliest slot).

    One location takes ``orders_per_slot`` orders per slot (the demo station: 500 per 5 min),
    so a test that sends hundreds of orders a second must spread them over many slots, as
    many locations would; the slot row is still the last lock of every checkout.
    """
    if spread_h <= 0:
        return None
    lead = int(location.get("lead_time_min", 5)) + 2
    slot = int(location.get("slot_minutes", 5))
    slots = max(1, int(spread_h * 60 // slot))
    when = datetime.now(UTC) + timedelta(minutes=lead + slot * rng.randrange(slots))
    return when.isoformat(timespec="seconds")


def order_body(
    location: dict[str, Any],
    items: list[dict[str, Any]],
    rng: random.Random,
    *,
    with_points: bool,
    spread_h: float,
    point_value_minor: int = 1,
    max_share_pct: int = 30,
) -> dict[str, Any]:
    """A realistic order: one to three items, sometimes two of one; points up to the cap."""
    picked = rng.sample(items, k=min(len(items), rng.choice((1, 1, 1, 2, 2, 3))))
    lines = [{"item_id": it["id"], "quantity": rng.choice((1, 1, 1, 2))} for it in picked]
    subtotal = sum(it["price_minor"] * ln["quantity"] for it, ln in zip(picked, lines, strict=True))
    points = 0
    if with_points:
        cap = subtotal * max_share_pct // 100 // max(1, point_value_minor)
        points = max(1, rng.randint(cap // 2, cap)) if cap else 0
    body: dict[str, Any] = {
        "location_id": location["id"],
        "lines": lines,
        "points_to_spend": points,
    }
    when = pickup_at(location, spread_h, rng)
    if when:
        body["pickup_at"] = when
    return body
