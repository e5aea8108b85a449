"""Till requests are signed (DESIGN §10): accepted, tampered, expired, replayed, revoked, from
another location, unsigned; and keys: two active at most, revocation at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.pos import sql as pos_sql
from server.settings import Settings
from shared.pos_signing import signature as sign
from tests.api.pos_support import admin, new_till, points_of_receipts, receipt_body, slug
from tests.conftest import Client, Demo, Stack, app_client, sign_in


async def stored_keys(services: Any, external_id: str) -> int:
    return int(
        await services.db.fetchval(
            "SELECT count(*) FROM receipt_keys WHERE external_id = $1", external_id
        )
    )


async def test_a_signed_receipt_is_accepted(client: Client, demo: Demo, services: Any) -> None:
    till = await new_till(client, demo)
    body = receipt_body(till)
    response = await till.receipt(body)
    assert response.status_code == 201, response.text
    assert response.json()["points_earned"] == 0  # anonymous
    assert await stored_keys(services, body["external_id"]) == 1


async def test_a_tampered_body_is_refused_and_nothing_stored(
    client: Client, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    body = receipt_body(till)
    signed = json.dumps(body).encode()
    tampered = json.dumps({**body, "external_id": body["external_id"] + "X"}).encode()
    response = await client.post(
        "/v1/pos/receipts", content=tampered, headers=till.signed_headers(signed)
    )
    assert response.status_code == 401 and slug(response) == "invalid-signature"
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await stored_keys(services, body["external_id"] + "X") == 0


async def test_an_expired_or_future_signature_is_refused(
    client: Client, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    body = receipt_body(till)
    old = await till.receipt(body, t=int(time.time()) - 301)
    assert old.status_code == 401 and slug(old) == "invalid-signature"
    future = await till.receipt(body, t=int(time.time()) + 600)
    assert future.status_code == 401
    assert await stored_keys(services, body["external_id"]) == 0
    fresh = await till.receipt(body, t=int(time.time()) - 200)
    assert fresh.status_code == 201, fresh.text


async def test_a_replayed_signature_is_refused(client: Client, demo: Demo) -> None:
    till = await new_till(client, demo)
    raw = json.dumps(receipt_body(till)).encode()
    headers = till.signed_headers(raw)
    first = await client.post("/v1/pos/receipts", content=raw, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/pos/receipts", content=raw, headers=headers)
    assert again.status_code == 401 and slug(again) == "signature-replayed"
    # Signed afresh, the same receipt is an idempotent replay: the first answer.
    resent = await client.post("/v1/pos/receipts", content=raw, headers=till.signed_headers(raw))
    assert resent.status_code == 201 and resent.content == first.content


async def test_unsigned_unknown_and_wrong_secret_are_refused(client: Client, demo: Demo) -> None:
    till = await new_till(client, demo)
    raw = json.dumps(receipt_body(till)).encode()
    as_json = {"Content-Type": "application/json"}
    unsigned = await client.post("/v1/pos/receipts", content=raw, headers=as_json)
    assert unsigned.status_code == 401 and slug(unsigned) == "signature-required"
    # Judged before the body is read as a receipt: garbage unsigned is 401, not 400.
    garbage = await client.post("/v1/pos/receipts", content=b"{not json", headers=as_json)
    assert garbage.status_code == 401
    unknown = await client.post(
        "/v1/pos/receipts",
        content=raw,
        headers={**till.signed_headers(raw), "X-Regulars-Key": "rpk_nope"},
    )
    assert unknown.status_code == 401 and slug(unknown) == "invalid-key"
    wrong = await client.post(
        "/v1/pos/receipts", content=raw, headers=till.signed_headers(raw, secret="rps_guess")
    )
    assert wrong.status_code == 401 and slug(wrong) == "invalid-signature"
    garbled = await client.post(
        "/v1/pos/receipts",
        content=raw,
        headers={**as_json, "X-Regulars-Key": till.key_id, "X-Regulars-Signature": "t=1,v1=zz"},
    )
    assert garbled.status_code == 401 and slug(garbled) == "signature-required"


async def test_keys_rotate_two_at_a_time_and_revocation_is_immediate(
    client: Client, demo: Demo
) -> None:
    till = await new_till(client, demo)
    base = f"/v1/pos/integrations/{till.integration_id}/keys"
    second = await client.post(base, headers=admin(demo))
    assert second.status_code == 201, second.text
    third = await client.post(base, headers=admin(demo))
    assert third.status_code == 409 and slug(third) == "too-many-keys"

    revoked = await client.delete(f"{base}/{till.key_id}", headers=admin(demo))
    assert revoked.status_code == 204, revoked.text
    refused = await till.receipt(receipt_body(till))
    assert refused.status_code == 401 and slug(refused) == "invalid-key"
    again = await client.delete(f"{base}/{till.key_id}", headers=admin(demo))
    assert again.status_code == 404

    till.key_id, till.secret = second.json()["key_id"], second.json()["secret"]
    assert (await till.receipt(receipt_body(till))).status_code == 201

    listed = await client.get("/v1/pos/integrations", headers=admin(demo))
    assert listed.status_code == 200
    mine = next(i for i in listed.json() if i["id"] == till.integration_id)
    assert [k["revoked_at"] is not None for k in mine["keys"]] == [True, False]
    assert "secret" not in json.dumps(mine)


async def test_a_key_of_one_location_cannot_write_for_another(
    client: Client, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo, "station")
    body = receipt_body(till, location_id=str(demo.locations["mitte"]))
    response = await till.receipt(body)
    assert response.status_code == 404 and slug(response) == "location-not-found"
    assert await stored_keys(services, body["external_id"]) == 0


async def test_only_admins_manage_integrations(client: Client, demo: Demo) -> None:
    response = await client.post(
        "/v1/pos/integrations",
        json={"location_id": str(demo.locations["station"])},
        headers={"Authorization": f"Bearer {demo.staff['manager']}"},
    )
    assert response.status_code == 403


async def test_a_webhook_url_must_be_public_https(
    demo: Demo, settings: Settings, notifier: RecordingNotifier
) -> None:
    """The SSRF guard where the URL is set (server/pos/webhook_net.py); the suite's own
    settings turn it off for its local receivers, so this app turns it back on."""
    guarded = msgspec.structs.replace(settings, pos_webhook_private_ok=False)
    async with app_client(guarded, notifier) as client:

        async def create(url: str) -> Any:
            return await client.post(
                "/v1/pos/integrations",
                json={"location_id": str(demo.locations["station"]), "webhook_url": url},
                headers=admin(demo),
            )

        for url in (
            "https://169.254.169.254/latest/meta-data/",
            "https://localhost:6379/",
            "http://till.example.com/hooks",
        ):
            refused = await create(url)
            assert refused.status_code == 422, url
            assert slug(refused) == "webhook-url-not-allowed", refused.text
        listed = await client.get("/v1/pos/integrations", headers=admin(demo))
        assert not any("169.254" in str(i["webhook_url"]) for i in listed.json())
        allowed = await create("https://till.example.com/hooks")
        assert allowed.status_code == 201, allowed.text
        # Its webhook URL leads nowhere: retired, so no other test's deliveries go to it.
        await client.app.state.services.db.fetchval(
            "UPDATE pos_integrations SET disabled_at = now() WHERE id = $1 RETURNING id",
            uuid.UUID(allowed.json()["integration_id"]),
        )


def test_the_signature_covers_time_and_body() -> None:
    assert sign("s", 1, b"a") != sign("s", 2, b"a") != sign("s", 1, b"b")
    assert sign("s", 1, b"a").startswith("t=1,v1=")


async def test_without_redis_signed_requests_fail_closed(
    client: Client, demo: Demo, services: Any, stack: Stack
) -> None:
    till = await new_till(client, demo)
    body = receipt_body(till)
    stack.stop_redis()
    try:
        refused = await till.receipt(body)
        assert refused.status_code == 503 and slug(refused) == "signature-check-unavailable"
        assert refused.headers["retry-after"]
        assert await stored_keys(services, body["external_id"]) == 0
    finally:
        stack.start_redis()
    for _ in range(100):
        if await services.gate.ping():
            break
        await asyncio.sleep(0.05)
    accepted = await till.receipt(body)
    assert accepted.status_code == 201, accepted.text


async def revoke(services: Any, till: Any, how: str) -> None:
    """Revoke ``till``'s key, or disable its integration, behind the API's back (no cache is
    told)."""
    if how == "key revoked":
        statement = "UPDATE pos_keys SET revoked_at = now() WHERE key_id = $1 RETURNING 1"
        await services.db.fetchval(statement, till.key_id)
    else:
        statement = "UPDATE pos_integrations SET disabled_at = now() WHERE id = $1 RETURNING 1"
        await services.db.fetchval(statement, uuid.UUID(till.integration_id))


@pytest.mark.parametrize("how", ["key revoked", "integration disabled"])
async def test_a_key_known_to_the_lane_is_refused_at_once_when_revoked(
    how: str, client: Client, demo: Demo, services: Any, notifier: RecordingNotifier
) -> None:
    """The lane does not read a key it read before (issue 23): the receipt's own statement
    checks it, so revocation is still immediate and nothing is stored, for an anonymous sale
    (one statement) and one naming a known guest (the guest sale's read)."""
    till = await new_till(client, demo)
    guest = await sign_in(client, notifier)
    for named in (None, {"phone": guest.phone}, {"phone": guest.phone}):
        taken = await till.receipt(receipt_body(till, guest=named))
        assert taken.status_code == 201, taken.text  # the key is known; the guest has a profile
    points = await points_of_receipts(services, guest.id)
    assert points > 0
    await revoke(services, till, how)
    for named in (None, {"phone": guest.phone}):
        body = receipt_body(till, guest=named)
        refused = await till.receipt(body)
        assert refused.status_code == 401 and slug(refused) == "invalid-key", refused.text
        assert refused.json()["detail"] == "unknown or revoked key"
        assert await stored_keys(services, body["external_id"]) == 0
        assert await stored_receipts(services, body["external_id"]) == 0
    assert await points_of_receipts(services, guest.id) == points


async def test_the_lane_does_not_read_a_key_it_knows(
    client: Client, demo: Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a first receipt, the key row is not read for an anonymous one (the statement
    checks the key), but still is for what the quick statements do not take (a refund): here
    the key read is made to find nothing."""
    till = await new_till(client, demo)
    assert (await till.receipt(receipt_body(till))).status_code == 201
    monkeypatch.setattr(pos_sql, "KEY_FOR_SIGNATURE", "SELECT 1 WHERE $1::text IS NULL")
    assert (await till.receipt(receipt_body(till))).status_code == 201
    refund = await till.receipt(receipt_body(till, refund_of="nope"))
    assert refund.status_code == 401 and slug(refund) == "invalid-key", refund.text


async def stored_receipts(services: Any, external_id: str) -> int:
    return int(
        await services.db.fetchval(
            "SELECT count(*) FROM receipts WHERE external_id = $1", external_id
        )
    )
