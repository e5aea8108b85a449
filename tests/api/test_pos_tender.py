"""Points as a till tender: look the guest up, hold, post or void exactly once, and a hold the
till never resolves is voided at its timeout (the worker's hold-timeout job)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from server.auth.notifier import RecordingNotifier
from server.loyalty.jobs import void_timed_out_holds
from server.pos.integrations import IntegrationIn
from server.seed.demo import PROGRAM
from server.settings import Settings
from shared import qr
from tests.api.helpers import assert_books_balance, ledger_state, redis_state
from tests.api.pos_support import SignedTill, new_till, slug
from tests.conftest import Client, Demo, GuestHandle, app_client, give_points, sign_in

WELCOME = PROGRAM.welcome_bonus_points


async def hold(till: SignedTill, guest: GuestHandle, points: int, key: str | None = None) -> Any:
    return await till.post(
        "/v1/pos/redemptions",
        {"guest_id": str(guest.id), "points": points, "external_ref": "T-1"},
        headers={"Idempotency-Key": key or str(uuid.uuid4())},
    )


async def test_lookup_by_qr_phone_or_card_shows_a_masked_guest(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    row = await services.db.fetchrow(
        "SELECT public_id, qr_secret, card_number FROM guests WHERE id = $1", guest.id
    )
    await services.db.fetchval("UPDATE guests SET last_name = 'Sommer' WHERE id = $1", guest.id)
    code = qr.generate(row["public_id"], bytes(row["qr_secret"]))
    for named in ({"qr_code": code}, {"phone": guest.phone}, {"card_number": row["card_number"]}):
        found = await till.post("/v1/pos/guests/lookup", named)
        assert found.status_code == 200, found.text
        assert found.json() == {
            "guest_id": str(guest.id),
            "display_name": "Test S.",
            "tier": PROGRAM.tiers[0].name,
            "points_available": WELCOME,
            "max_points_share_pct": PROGRAM.max_points_share_pct,
        }
    two = await till.post("/v1/pos/guests/lookup", {"phone": guest.phone, "card_number": "1"})
    assert two.status_code == 422 and slug(two) == "lookup-needs-one"
    stale = qr.generate(
        row["public_id"], bytes(row["qr_secret"]), now_s=datetime.now(UTC).timestamp() - 3600
    )
    gone = await till.post("/v1/pos/guests/lookup", {"qr_code": stale})
    assert gone.status_code == 404


async def test_hold_then_post_or_void_exactly_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    await give_points(client, demo, guest, 400)
    till = await new_till(client, demo)
    key = str(uuid.uuid4())
    held = await hold(till, guest, 150, key)
    assert held.status_code == 201, held.text
    assert held.json()["state"] == "pending" and held.json()["points"] == -150
    assert held.json()["points_available"] == WELCOME + 400 - 150
    again = await hold(till, guest, 150, key)
    assert again.status_code == 201 and again.content == held.content
    assert await ledger_state(services, guest.id) == (WELCOME + 400 - 150, 150)

    hold_id = held.json()["id"]
    posted = await till.post(f"/v1/pos/redemptions/{hold_id}/post", {})
    assert posted.status_code == 200 and posted.json()["state"] == "posted"
    repeat = await till.post(f"/v1/pos/redemptions/{hold_id}/post", {})
    assert repeat.status_code == 200
    void = await till.post(f"/v1/pos/redemptions/{hold_id}/void", {})
    assert void.status_code == 409 and slug(void) == "already-posted"

    second = await hold(till, guest, 100)
    voided = await till.post(f"/v1/pos/redemptions/{second.json()['id']}/void", {})
    assert voided.status_code == 200 and voided.json()["state"] == "voided"
    assert await ledger_state(services, guest.id) == (WELCOME + 400 - 150, 0)
    assert await redis_state(services, guest.id) in (None, (WELCOME + 400 - 150, 0))

    too_much = await hold(till, guest, 10_000)
    assert too_much.status_code == 422 and slug(too_much) == "insufficient-points"
    elsewhere = await new_till(client, demo, "mitte")
    foreign = await elsewhere.post(f"/v1/pos/redemptions/{hold_id}/void", {})
    assert foreign.status_code == 404
    await assert_books_balance(services, demo.brand_id)


async def test_a_hold_the_till_never_resolves_is_voided_at_its_timeout(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    forgotten = (await hold(till, guest, 40)).json()["id"]
    late = (await hold(till, guest, 30)).json()["id"]
    assert await ledger_state(services, guest.id) == (WELCOME - 70, 70)
    for hold_id in (forgotten, late):  # their time is up
        await services.db.fetchval(
            "WITH t AS (UPDATE transfers SET timeout_at = now() - interval '1 s' WHERE id = $1)"
            " UPDATE open_holds SET timeout_at = now() - interval '1 s' WHERE transfer_id = $1",
            uuid.UUID(hold_id),
        )
    # Posting after the timeout, before the job came round: voided, and the till is told.
    expired = await till.post(f"/v1/pos/redemptions/{late}/post", {})
    assert expired.status_code == 409 and slug(expired) == "redemption-expired"
    assert await void_timed_out_holds(services.loyalty, 1000) >= 1
    after_job = await till.post(f"/v1/pos/redemptions/{forgotten}/post", {})
    assert after_job.status_code == 409 and slug(after_job) == "already-voided"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    await assert_books_balance(services, demo.brand_id)


async def test_a_redemption_needs_an_idempotency_key(
    client: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    response = await till.post("/v1/pos/redemptions", {"guest_id": str(guest.id), "points": 5})
    assert response.status_code == 400 and slug(response) == "idempotency-key-required"


async def test_guest_lookups_are_rate_limited_per_integration(
    settings: Settings, demo: Demo
) -> None:
    limited = msgspec.structs.replace(settings, pos_lookups_per_minute=2)
    async with app_client(limited, RecordingNotifier()) as small:
        created = await small.app.state.services.pos_integrations.create(
            IntegrationIn(location_id=demo.locations["station"])
        )
        till = SignedTill(
            small, str(created.integration_id), created.key_id, created.secret,
            demo.locations["station"],
        )  # fmt: skip
        answers = [
            await till.post("/v1/pos/guests/lookup", {"phone": f"+4915200000{n:03d}"})
            for n in range(3)
        ]
        assert [a.status_code for a in answers] == [404, 404, 429]
        assert slug(answers[2]) == "too-many-pos-lookups"
