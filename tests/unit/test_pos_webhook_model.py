"""Pure rules of orders out to the till: which events a till hears and the retry ladder."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from server.pos.webhook_model import (
    event_of,
    location_of,
    new_webhook_secret,
    retry_delay_s,
    signed_headers,
    undeliverable,
    webhook_id,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_only_order_events_with_a_location_reach_a_till() -> None:
    order = {"id": "o1", "location_id": "l1", "status": "placed"}
    assert location_of("order.placed", {"order": order}) == "l1"
    assert location_of("order.status", {"order": order}) == "l1"
    assert location_of("guest.merged", {"order": order}) is None
    assert location_of("order.placed", {"order": {"id": "o1"}}) is None
    assert location_of("order.placed", {}) is None


def test_event_body_is_type_timestamp_and_the_order() -> None:
    at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert event_of("order.status", {"event": "order.status", "order": {"id": "o1"}}, at) == {
        "type": "order.status",
        "timestamp": "2026-03-02T08:00:00+00:00",
        "data": {"id": "o1"},
    }


def test_webhook_id_is_stable_per_event_and_integration() -> None:
    integration = "0b7c6a1e-3f2d-4c55-9d1e-6a2f8e4b7c90"
    assert webhook_id(42, integration) == "msg_42_0b7c6a1e3f2d4c559d1e6a2f8e4b7c90"
    assert webhook_id(42, integration) != webhook_id(43, integration)


def test_signed_headers_verify_with_standard_webhooks() -> None:
    body = b'{"type":"order.placed","data":{"id":"o1"}}'
    headers = signed_headers(SECRET, "msg_1_x", datetime.now(UTC), body)
    assert headers["webhook-id"] == "msg_1_x"
    assert Webhook(SECRET).verify(body, headers)["data"] == {"id": "o1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"o1", b"o2"), headers)


def test_a_secret_being_replaced_signs_beside_the_new_one() -> None:
    body = b'{"type":"order.status"}'
    new = new_webhook_secret()
    headers = signed_headers(new, "msg_2_x", datetime.now(UTC), body, previous=SECRET)
    assert len(headers["webhook-signature"].split(" ")) == 2
    # A till on either secret accepts it; one on neither does not.
    assert Webhook(new).verify(body, headers) == Webhook(SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(body, headers)
    alone = signed_headers(new, "msg_2_x", datetime.now(UTC), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, alone)


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [(1, 5, 10), (2, 10, 20), (3, 20, 40), (6, 150, 300), (7, 150, 300), (30, 150, 300)],
)
def test_retry_ladder_doubles_is_jittered_and_capped(
    attempts: int, low: float, high: float
) -> None:
    assert retry_delay_s(attempts, 10, 300, lambda a, b: a) == low
    assert retry_delay_s(attempts, 10, 300, lambda a, b: b) == high
    assert low <= retry_delay_s(attempts, 10, 300) <= high


def test_a_new_secret_signs_and_verifies() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_") and secret != new_webhook_secret()
    headers = signed_headers(secret, "msg_1", datetime.now(UTC), b"{}")
    assert Webhook(secret).verify(b"{}", headers) == {}


def test_what_cannot_be_delivered_says_why() -> None:
    assert undeliverable("https://till.example/hook", SECRET, disabled=False) is None
    assert "disabled" in str(undeliverable("https://till.example/hook", SECRET, disabled=True))
    assert "webhook_url" in str(undeliverable(None, SECRET, disabled=False))
    assert "webhook_secret" in str(undeliverable("https://till.example/hook", None, disabled=False))
