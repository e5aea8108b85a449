"""A barista cannot mint points without limit (issue 21, finding 2): per-role limits from the
programme (largest accrual, accruals per staff member per hour, per guest per day) above which
a shift lead or manager makes the accrual; receipt references unique per brand; every accrual
and adjustment in the audit log with who and which device."""

from __future__ import annotations

import uuid
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.infra.identity import Principal
from server.seed.demo import DEMO_PIN, PROGRAM
from tests.api.staff_support import audit_rows, bearer, make_staff
from tests.api.test_staff_auth import pair_device
from tests.conftest import Client, Demo, GuestHandle, give_points, sign_in

BARISTA = PROGRAM.accrual_limits["barista"]


def slug(response: Any) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def accrue(
    client: Client, token: str, guest: GuestHandle, amount_minor: int, location: uuid.UUID
) -> Any:
    body = {
        "amount_paid_minor": amount_minor,
        "location_id": str(location),
        "receipt_ref": f"R-{uuid.uuid4().hex[:12]}",
    }
    return await client.post(
        f"/v1/guests/{guest.id}/accruals", json=body, headers=bearer(token, str(uuid.uuid4()))
    )


def minor_for(points: int) -> int:
    """The receipt amount that earns ``points`` at the base tier."""
    return points * 100 // PROGRAM.earn_per_100_minor


async def test_a_large_accrual_needs_a_shift_lead(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    assert BARISTA.max_points is not None
    guest = await sign_in(client, notifier)
    mitte = demo.locations["mitte"]
    big = minor_for(BARISTA.max_points + 1)
    refused = await accrue(client, demo.staff["barista"], guest, big, mitte)
    assert refused.status_code == 403 and slug(refused) == "accrual-needs-approval", refused.text
    problem = refused.json()
    assert problem["limit"] == "max_points" and "shift_lead" in problem["approver_roles"]
    assert await audit_rows(services, guest.id, "points.accrue") == []  # nothing written
    # At the limit a barista may; above it the shift lead makes the accrual.
    at_limit = await accrue(
        client, demo.staff["barista"], guest, minor_for(BARISTA.max_points), mitte
    )
    assert at_limit.status_code == 201, at_limit.text
    approved = await accrue(client, demo.staff["shift_lead"], guest, big, mitte)
    assert approved.status_code == 201, approved.text
    assert approved.json()["points"] > BARISTA.max_points  # (at the tier the guest reached)
    # Ten million minor units: not even a shift lead alone.
    huge = await accrue(client, demo.staff["shift_lead"], guest, 10_000_000, mitte)
    assert huge.status_code == 403 and huge.json()["approver_roles"] == ["manager", "admin"]


async def test_accruals_per_guest_per_day_are_limited(
    client: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    assert BARISTA.per_guest_per_day is not None
    guest = await sign_in(client, notifier)
    mitte = demo.locations["mitte"]
    for _ in range(BARISTA.per_guest_per_day):
        assert (await accrue(client, demo.staff["barista"], guest, 500, mitte)).status_code == 201
    refused = await accrue(client, demo.staff["barista"], guest, 500, mitte)
    assert refused.status_code == 403 and refused.json()["limit"] == "per_guest_per_day"
    assert (await accrue(client, demo.staff["shift_lead"], guest, 500, mitte)).status_code == 201


async def test_accruals_per_staff_member_per_hour_are_limited(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    assert BARISTA.per_staff_per_hour is not None and BARISTA.per_guest_per_day is not None
    mitte = demo.locations["mitte"]
    barista = await make_staff(services, demo.brand_id, "barista", [mitte])
    token = services.tokens.issue(
        Principal(kind="staff", subject_id=barista.id, brand_id=demo.brand_id, role="barista",
                  location_ids=frozenset({mitte}))
    )  # fmt: skip
    guest = await sign_in(client, notifier)
    for n in range(BARISTA.per_staff_per_hour):
        if n and n % BARISTA.per_guest_per_day == 0:
            guest = await sign_in(client, notifier)
        response = await accrue(client, token, guest, 200, mitte)
        assert response.status_code == 201, (n, response.text)
    refused = await accrue(client, token, await sign_in(client, notifier), 200, mitte)
    assert refused.status_code == 403 and refused.json()["limit"] == "per_staff_per_hour"


async def test_a_receipt_is_accrued_once_in_the_whole_brand(
    client: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    guest = await sign_in(client, notifier)
    body = {"amount_paid_minor": 800, "receipt_ref": f"R-{uuid.uuid4().hex[:12]}"}
    first = await client.post(
        f"/v1/guests/{guest.id}/accruals",
        json={**body, "location_id": str(demo.locations["mitte"])},
        headers=bearer(demo.staff["barista"], str(uuid.uuid4())),
    )
    assert first.status_code == 201, first.text
    elsewhere = await client.post(
        f"/v1/guests/{guest.id}/accruals",
        json={**body, "location_id": str(demo.locations["station"])},
        headers=bearer(demo.staff["barista"], str(uuid.uuid4())),
    )
    assert elsewhere.status_code == 409 and slug(elsewhere) == "receipt-already-accrued"


async def test_accruals_and_adjustments_are_audited_with_who_and_which_device(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    device = await pair_device(client, demo, "mitte")
    signed_in = await client.post(
        "/v1/auth/pin",
        json={"device_id": device["device_id"], "device_secret": device["device_secret"],
              "email": "barista@demo.regulars.test", "pin": DEMO_PIN},
    )  # fmt: skip
    assert signed_in.status_code == 200, signed_in.text
    pin_token = signed_in.json()["access_token"]
    staff_id = uuid.UUID(signed_in.json()["staff_id"])
    response = await accrue(client, pin_token, guest, 900, demo.locations["mitte"])
    assert response.status_code == 201, response.text
    (row,) = await audit_rows(services, guest.id, "points.accrue")
    assert row["actor_id"] == staff_id and row["device_id"] == uuid.UUID(device["device_id"])
    assert row["detail"]["role"] == "barista" and row["detail"]["points"] > 0
    await give_points(client, demo, guest, 25)
    (adjusted,) = await audit_rows(services, guest.id, "points.adjust")
    assert adjusted["actor_id"] == demo.manager_id and adjusted["detail"]["points"] == 25
