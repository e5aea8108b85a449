"""Pure rules of orders out to the till (DESIGN §10): which outbox events a till hears, what
it receives, how a delivery is signed, and when a failed one is tried again. No I/O."""

from __future__ import annotations

import base64
import random
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

__all__ = [
    "ORDER_TOPICS",
    "event_of",
    "location_of",
    "new_webhook_secret",
    "retry_delay_s",
    "signed_headers",
    "undeliverable",
    "webhook_id",
]

# The outbox topics server/orders writes in the order's transaction.
ORDER_TOPICS = frozenset({"order.placed", "order.status"})


def location_of(topic: str, payload: Mapping[str, Any]) -> str | None:
    """The location whose till hears this outbox event, or None for events tills ignore."""
    if topic not in ORDER_TOPICS:
        return None
    order = payload.get("order")
    location = order.get("location_id") if isinstance(order, Mapping) else None
    return str(location) if location else None


def event_of(topic: str, payload: Mapping[str, Any], created_at: datetime) -> dict[str, Any]:
    """What a till receives, by webhook or by polling: Standard Webhooks' recommended
    ``{"type", "timestamp", "data"}`` with the order as ``data``."""
    return {"type": topic, "timestamp": created_at.isoformat(), "data": payload["order"]}


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret, ``whsec_`` + base64 of 32 random bytes: made when
    an integration gets a webhook_url and shown to its admin once, for the till to verify."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def undeliverable(url: str | None, secret: str | None, disabled: bool) -> str | None:
    """Why a delivery cannot be attempted at all (it goes straight to the dead letters, where
    an admin sees it and can replay it once fixed), or None."""
    if disabled:
        return "the integration is disabled"
    if not url:
        return "the integration has no webhook_url any more"
    if not secret:
        return "the integration has no webhook_secret to sign with"
    return None


def webhook_id(seq: int, integration_id: str) -> str:
    """The ``webhook-id`` of one event for one integration: the same on every attempt, so the
    till can drop a repeat."""
    return f"msg_{seq}_{integration_id.replace('-', '')}"


def signed_headers(
    secret: str, message_id: str, at: datetime, body: bytes, *, previous: str | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``: ``webhook-id``, ``webhook-timestamp`` (the
    attempt's time, which receivers check for freshness) and ``webhook-signature``. With
    ``previous`` (a secret being replaced), its signature follows, space-separated as the spec
    has it for rotation: a receiver accepts the message when either verifies."""
    text = body.decode()
    signature = " ".join(
        Webhook(key).sign(message_id, at, text) for key in (secret, previous) if key is not None
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def retry_delay_s(
    attempts: int,
    base_s: float,
    cap_s: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds until the next try after ``attempts`` failed ones: doubling from ``base_s``,
    never above ``cap_s``, with "equal jitter" (between half and all of it) so tills that
    came back at once are not hit by every worker in step."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return uniform(ceiling / 2, ceiling)
