"""Counter accruals and two-phase redemptions, checked in PostgreSQL and in Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.loyalty.model import earn_points
from server.seed.demo import PROGRAM
from tests.api.helpers import assert_books_balance, ledger_state, redis_state
from tests.api.staff_support import audit_rows, bearer, staff_token
from tests.conftest import Client, Demo, GuestHandle, give_points, sign_in

WELCOME = PROGRAM.welcome_bonus_points


def slug(response: Any) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def accrue(
    client: Client, token: str, guest: GuestHandle, body: dict[str, Any], key: str | None = None
) -> Any:
    return await client.post(
        f"/v1/guests/{guest.id}/accruals",
        json=body,
        headers=bearer(token, key or str(uuid.uuid4())),
    )


async def reserve(
    client: Client, token: str, guest: GuestHandle, points: int, location: uuid.UUID, key: str
) -> Any:
    return await client.post(
        f"/v1/guests/{guest.id}/redemptions",
        json={"points": points, "location_id": str(location)},
        headers=bearer(token, key),
    )


async def test_accrual_credits_once_per_key_and_per_receipt(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    token = demo.staff["barista"]
    mitte = demo.locations["mitte"]
    body = {"amount_paid_minor": 1000, "location_id": str(mitte), "receipt_ref": f"R-{guest.id}"}
    key = str(uuid.uuid4())
    first = await accrue(client, token, guest, body, key)
    assert first.status_code == 201, first.text
    points = earn_points(PROGRAM, 1000, PROGRAM.tiers[0])
    transfer = first.json()
    assert transfer["code"] == "accrual" and transfer["state"] == "posted"
    assert transfer["points"] == points and transfer["points_available"] == WELCOME + points

    replay = await accrue(client, token, guest, body, key)
    assert replay.status_code == 201 and replay.content == first.content
    same_receipt = await accrue(client, token, guest, body)
    assert same_receipt.status_code == 409 and slug(same_receipt) == "receipt-already-accrued"
    changed = await accrue(client, token, guest, {**body, "amount_paid_minor": 2000}, key)
    assert changed.status_code == 422 and slug(changed) == "idempotency-conflict"

    assert await ledger_state(services, guest.id) == (WELCOME + points, 0)
    assert await redis_state(services, guest.id) == (WELCOME + points, 0)
    profile = await services.db.fetchrow(
        "SELECT visits_total, spend_total_minor, points_earned_12m, last_visit_at"
        " FROM guest_profiles WHERE guest_id = $1",
        guest.id,
    )
    assert profile["visits_total"] == 1 and profile["spend_total_minor"] == 1000
    assert profile["points_earned_12m"] == points and profile["last_visit_at"] is not None
    rows = await audit_rows(services, guest.id, "points.accrue")
    assert len(rows) == 1 and rows[0]["detail"]["points"] == points
    await assert_books_balance(services, demo.brand_id)


async def test_an_accrual_answers_where_the_guests_tier_now_stands(
    client: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    # The kiosk redraws "N points to Silver" from this answer, not from the scan before it.
    guest = await sign_in(client, notifier)
    token, mitte = demo.staff["barista"], str(demo.locations["mitte"])

    def receipt(amount_minor: int) -> dict[str, Any]:
        ref = f"R-{uuid.uuid4()}"
        return {"amount_paid_minor": amount_minor, "location_id": mitte, "receipt_ref": ref}

    small = await accrue(client, token, guest, receipt(1000))
    assert small.status_code == 201, small.text
    assert [small.json()[k] for k in ("points", "tier", "next_tier", "points_to_next_tier")] == [
        50, "Bronze", "Silver", 450
    ]  # fmt: skip

    crossing = await accrue(client, token, guest, receipt(9000))
    assert crossing.status_code == 201, crossing.text
    assert [crossing.json()[k] for k in ("points", "tier", "next_tier", "points_to_next_tier")] == [
        450, "Silver", "Gold", 1500
    ]  # fmt: skip


async def test_accrual_repays_a_clawback_debt_first(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    # A refund clawback of points already spent: the balance goes below zero.
    async with services.db.transaction() as conn:
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE guest_id = $1", guest.id)
        state = await services.loyalty.ledger.debit(
            conn,
            transfer_id=(debt_id := uuid.uuid4()),
            brand_id=demo.brand_id,
            account_id=account_id,
            points=WELCOME + 30,
            code="refund_reversal",
            sink="issued",
            guarded=False,
        )
    await services.loyalty.mirror(guest.id, "credit", debt_id, state, -(WELCOME + 30))
    assert await ledger_state(services, guest.id) == (-30, 0)

    token = demo.staff["barista"]
    station = demo.locations["station"]
    refused = await reserve(client, token, guest, 1, station, str(uuid.uuid4()))
    assert refused.status_code == 422 and slug(refused) == "insufficient-points"

    body = {"amount_paid_minor": 2000, "location_id": str(station), "receipt_ref": "debt-1"}
    response = await accrue(client, token, guest, body)
    assert response.status_code == 201, response.text
    earned = earn_points(PROGRAM, 2000, PROGRAM.tiers[0])
    assert response.json()["points_available"] == earned - 30
    assert await ledger_state(services, guest.id) == (earned - 30, 0)
    assert await redis_state(services, guest.id) == (earned - 30, 0)


async def test_accrual_scope_and_guest_checks(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    token = demo.staff["barista"]  # mitte and station only
    kreuzberg = {
        "amount_paid_minor": 500,
        "location_id": str(demo.locations["kreuzberg"]),
        "receipt_ref": "K-1",
    }
    elsewhere = await accrue(client, token, guest, kreuzberg)
    assert elsewhere.status_code == 404 and slug(elsewhere) == "location-not-found"
    nobody = GuestHandle(uuid.uuid4(), "", "")
    body = {**kreuzberg, "location_id": str(demo.locations["mitte"])}
    missing = await accrue(client, token, nobody, body)
    assert missing.status_code == 404 and slug(missing) == "guest-not-found"
    no_key = await client.post(f"/v1/guests/{guest.id}/accruals", json=body, headers=bearer(token))
    assert no_key.status_code == 400
    future = await accrue(
        client, token, guest, {**body, "scanned_at": datetime(2999, 1, 1, tzinfo=UTC).isoformat()}
    )
    assert future.status_code == 422 and slug(future) == "invalid-scan-time"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)


async def test_redemption_reserve_then_post(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    await give_points(client, demo, guest, 300)
    token = demo.staff["barista"]
    station = demo.locations["station"]
    key = str(uuid.uuid4())
    held = await reserve(client, token, guest, 150, station, key)
    assert held.status_code == 201, held.text
    transfer = held.json()
    assert transfer["state"] == "pending" and transfer["code"] == "redemption"
    assert transfer["points"] == -150 and transfer["points_available"] == WELCOME + 300 - 150
    assert await ledger_state(services, guest.id) == (WELCOME + 150, 150)
    assert await redis_state(services, guest.id) == (WELCOME + 150, 150)
    replay = await reserve(client, token, guest, 150, station, key)
    assert replay.status_code == 201 and replay.content == held.content
    assert await ledger_state(services, guest.id) == (WELCOME + 150, 150)

    posted = await client.post(f"/v1/redemptions/{transfer['id']}/post", headers=bearer(token))
    assert posted.status_code == 200, posted.text
    assert posted.json()["state"] == "posted"
    assert posted.json()["points_available"] == WELCOME + 150
    assert await ledger_state(services, guest.id) == (WELCOME + 150, 0)
    assert await redis_state(services, guest.id) == (WELCOME + 150, 0)
    again = await client.post(f"/v1/redemptions/{transfer['id']}/post", headers=bearer(token))
    assert again.status_code == 200 and again.json()["state"] == "posted"
    void_after = await client.post(f"/v1/redemptions/{transfer['id']}/void", headers=bearer(token))
    assert void_after.status_code == 409 and slug(void_after) == "already-posted"
    assert await ledger_state(services, guest.id) == (WELCOME + 150, 0)
    assert len(await audit_rows(services, guest.id, "points.redeem.post")) == 1
    await assert_books_balance(services, demo.brand_id)


async def test_redemption_reserve_then_void_and_post_refused(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    token = demo.staff["barista"]
    station = demo.locations["station"]
    held = await reserve(client, token, guest, 60, station, str(uuid.uuid4()))
    assert held.status_code == 201, held.text
    transfer_id = held.json()["id"]
    assert await redis_state(services, guest.id) == (WELCOME - 60, 60)
    voided = await client.post(f"/v1/redemptions/{transfer_id}/void", headers=bearer(token))
    assert voided.status_code == 200 and voided.json()["state"] == "voided"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)
    post_after = await client.post(f"/v1/redemptions/{transfer_id}/post", headers=bearer(token))
    assert post_after.status_code == 409 and slug(post_after) == "already-voided"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)


async def test_redemption_refused_when_points_are_short(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    token = demo.staff["barista"]
    refused = await reserve(
        client, token, guest, WELCOME + 1, demo.locations["station"], str(uuid.uuid4())
    )
    assert refused.status_code == 422 and slug(refused) == "insufficient-points"
    assert refused.json()["points_available"] == WELCOME
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)


async def test_redemptions_are_scoped_to_the_location(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    barista = demo.staff["barista"]
    elsewhere = await reserve(
        client, barista, guest, 10, demo.locations["kreuzberg"], str(uuid.uuid4())
    )
    assert elsewhere.status_code == 404 and slug(elsewhere) == "location-not-found"
    held = await reserve(client, barista, guest, 10, demo.locations["station"], str(uuid.uuid4()))
    assert held.status_code == 201
    mitte_only = staff_token(services, demo, "barista", {demo.locations["mitte"]})
    other = await client.post(
        f"/v1/redemptions/{held.json()['id']}/post", headers=bearer(mitte_only)
    )
    assert other.status_code == 404 and slug(other) == "redemption-not-found"
    unknown = await client.post(f"/v1/redemptions/{uuid.uuid4()}/post", headers=bearer(barista))
    assert unknown.status_code == 404
    assert await ledger_state(services, guest.id) == (WELCOME - 10, 10)


async def test_a_timed_out_redemption_cannot_be_posted(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    token = demo.staff["barista"]
    held = await reserve(client, token, guest, 40, demo.locations["station"], str(uuid.uuid4()))
    transfer_id = uuid.UUID(held.json()["id"])
    async with services.db.transaction() as conn:
        await conn.execute(
            "UPDATE transfers SET timeout_at = now() - interval '1 second' WHERE id = $1",
            transfer_id,
        )
    late = await client.post(f"/v1/redemptions/{transfer_id}/post", headers=bearer(token))
    assert late.status_code == 409 and slug(late) == "redemption-expired"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)


async def test_redemptions_are_rate_limited_per_staff(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    staff_id = uuid.uuid4()
    token = staff_token(services, demo, "barista", {demo.locations["station"]}, staff_id)
    limit = services.settings.redemptions_per_minute
    await services.gate.client.set(f"rg:limit:redemptions:{staff_id}", limit, ex=120)
    refused = await reserve(client, token, guest, 10, demo.locations["station"], str(uuid.uuid4()))
    assert refused.status_code == 429 and slug(refused) == "too-many-redemptions"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
