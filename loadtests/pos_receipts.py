"""What a till sends, for the load tests: receipts of realistic shape (DESIGN §10).

1-4 lines from a café till's own catalogue (some items the app's menu does not sell, beans by
weight), a third of the receipts with a guest (their QR scanned at the till, or their phone),
a few refunds of earlier sales, a few receipts of a till that was offline and resyncs hours
late, and a few exact replays of a receipt already sent. No Locust import: the generator is
plain Python so it can be tested (and reused by benchmarks) outside a Locust process.
"""

from __future__ import annotations

import collections
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loadtests.common import Guest
from shared import qr

__all__ = ["CATALOGUE", "Sent", "TillStream"]

# sku, name, category, unit price (minor), quantity a till rings up
CATALOGUE: tuple[tuple[str, str, str, int, float], ...] = (
    ("CAP", "Cappuccino", "coffee", 380, 1),
    ("LAT", "Latte", "coffee", 420, 1),
    ("ESP", "Espresso", "coffee", 250, 1),
    ("FLW", "Flat white", "coffee", 400, 1),
    ("CRO", "Croissant", "bakery", 320, 1),
    ("MUF", "Blueberry muffin", "bakery", 290, 1),
    ("WTR", "Still water", "drinks", 180, 1),
    ("BNS-KG", "House blend beans (kg)", "beans", 2400, 0.25),
)


@dataclass(frozen=True)
class Sent:
    kind: str  # "sale" | "late" | "refund" | "replay"
    body: bytes


@dataclass
class _Sale:
    external_id: str
    lines: list[dict[str, Any]]
    tender: str


class TillStream:
    """An endless stream of receipt bodies for one till, at one location."""

    def __init__(
        self,
        location_id: str,
        guests: Sequence[Guest],
        rng: random.Random,
        *,
        guest_share: float = 1 / 3,
        refund_p: float = 0.03,
        late_p: float = 0.03,
        replay_p: float = 0.02,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.location_id = location_id
        self.guests = list(guests)
        self.rng = rng
        self.guest_share = guest_share
        self.refund_p = refund_p
        self.late_p = late_p
        self.replay_p = replay_p
        self.clock = clock
        self.till = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
        self.count = 0
        # Sales that may still be refunded or replayed (bounded: a till's recent memory).
        self.recent: collections.deque[tuple[_Sale, bytes]] = collections.deque(maxlen=200)

    def next(self) -> Sent:
        roll = self.rng.random()
        if roll < self.refund_p and self.recent:
            return self._refund()
        if roll < self.refund_p + self.replay_p and self.recent:
            return Sent("replay", self.rng.choice(self.recent)[1])
        late = roll < self.refund_p + self.replay_p + self.late_p
        return self._sale(late)

    def _external_id(self) -> str:
        self.count += 1
        return f"lt-{self.till}-{self.count}"

    def _sale(self, late: bool) -> Sent:
        now = self.clock()
        # An offline till resyncs 1-3 hours after the sale.
        at = now - self.rng.uniform(3600, 3 * 3600) if late else now
        lines = []
        for sku, name, category, price, quantity in self.rng.sample(
            CATALOGUE, self.rng.randint(1, 4)
        ):
            count = quantity if quantity != 1 else self.rng.choice((1, 1, 1, 2))
            line: dict[str, Any] = {
                "sku": sku,
                "name": name,
                "category": category,
                "quantity": count,
                "unit_price_minor": price,
            }
            if self.rng.random() < 0.1:  # happy hour: 10 % off the line
                line["discount_minor"] = round(price * count) // 10
            lines.append(line)
        tender = "card" if self.rng.random() < 0.7 else "cash"
        sale = _Sale(self._external_id(), lines, tender)
        body: dict[str, Any] = {
            "external_id": sale.external_id,
            "location_id": self.location_id,
            "occurred_at": _iso(at),
            "lines": lines,
            "payments": [{"tender": tender, "amount_minor": _net(lines)}],
        }
        if self.guests and self.rng.random() < self.guest_share:
            body["guest"] = self._guest(at)
        raw = _encode(body)
        self.recent.append((sale, raw))
        return Sent("late" if late else "sale", raw)

    def _guest(self, at: float) -> dict[str, Any]:
        guest = self.rng.choice(self.guests)
        if guest.qr_secret_hex and guest.public_id and self.rng.random() < 0.6:
            code = qr.generate(guest.public_id, bytes.fromhex(guest.qr_secret_hex), now_s=at)
            return {"qr_code": code, "scanned_at": _iso(at)}
        if guest.phone:
            return {"phone": guest.phone}
        return {}

    def _refund(self) -> Sent:
        index = self.rng.randrange(len(self.recent))
        sale, _ = self.recent[index]
        del self.recent[index]  # one refund per sale: a second could over-return a line
        line = self.rng.choice(sale.lines)
        body = {
            "external_id": self._external_id(),
            "location_id": self.location_id,
            "occurred_at": _iso(self.clock()),
            "refund_of": sale.external_id,
            "lines": [line],
            "payments": [{"tender": sale.tender, "amount_minor": _net([line])}],
        }
        return Sent("refund", _encode(body))


def _net(lines: list[dict[str, Any]]) -> int:
    return sum(
        round(line["quantity"] * line["unit_price_minor"]) - line.get("discount_minor", 0)
        for line in lines
    )


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
