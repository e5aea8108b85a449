"""Staff sign-in: password, TOTP for managers, lockout; kiosk pairing and PIN sign-in."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import msgspec
import pyotp
import pytest

from server.app import create_app
from server.lifespan import lifespan
from server.seed.demo import DEMO_PASSWORD, DEMO_PIN, DEMO_TOTP_SECRET
from tests.api.staff_support import (
    PASSWORD,
    PIN,
    bearer,
    make_staff,
    other_brand,
)
from tests.conftest import Client, Demo, Stack


def slug(response: Any) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def test_barista_signs_in_and_refreshes(client: Client, services: Any) -> None:
    response = await client.post(
        "/v1/auth/staff",
        json={"email": "Barista@demo.regulars.test", "password": DEMO_PASSWORD},
    )
    assert response.status_code == 200, response.text
    pair = response.json()
    assert pair["role"] == "barista" and pair["staff_id"]
    principal = services.tokens.verify(pair["access_token"])
    assert principal.kind == "staff" and principal.role == "barista"
    assert len(principal.location_ids) == 2  # mitte and station
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["role"] == "barista"


async def test_wrong_password_is_refused(client: Client) -> None:
    response = await client.post(
        "/v1/auth/staff", json={"email": "nobody@demo.regulars.test", "password": "x"}
    )
    assert response.status_code == 401 and slug(response) == "invalid-credentials"


async def test_manager_needs_totp(client: Client, services: Any) -> None:
    brand = await other_brand(services)
    secret = pyotp.random_base32()
    manager = await make_staff(services, brand.brand_id, "manager", totp_secret=secret)
    body = {"email": manager.email, "password": PASSWORD}
    missing = await client.post("/v1/auth/staff", json=body)
    assert missing.status_code == 401 and slug(missing) == "totp-required"
    wrong_code = f"{(int(pyotp.TOTP(secret).now()) + 500_000) % 1_000_000:06d}"
    wrong = await client.post("/v1/auth/staff", json={**body, "totp": wrong_code})
    assert wrong.status_code == 401 and slug(wrong) == "wrong-totp"
    right = await client.post("/v1/auth/staff", json={**body, "totp": pyotp.TOTP(secret).now()})
    assert right.status_code == 200, right.text
    assert right.json()["role"] == "manager"


async def test_demo_manager_signs_in_with_totp_once_per_code(client: Client) -> None:
    login = {
        "email": "manager@demo.regulars.test",
        "password": DEMO_PASSWORD,
        "totp": pyotp.TOTP(DEMO_TOTP_SECRET).now(),
    }
    response = await client.post("/v1/auth/staff", json=login)
    assert response.status_code == 200, response.text
    replayed = await client.post("/v1/auth/staff", json=login)
    assert replayed.status_code == 401 and slug(replayed) == "totp-reused"


async def test_lockout_after_failures_and_reset_on_success(client: Client, services: Any) -> None:
    brand = await other_brand(services)
    barista = await make_staff(services, brand.brand_id, "barista", [brand.location_id])
    limit = services.settings.staff_max_failed_logins
    wrong = {"email": barista.email, "password": "wrong password"}
    right = {"email": barista.email, "password": PASSWORD}
    # A success in between resets the count.
    for _ in range(limit - 1):
        assert (await client.post("/v1/auth/staff", json=wrong)).status_code == 401
    assert (await client.post("/v1/auth/staff", json=right)).status_code == 200
    for _ in range(limit - 1):
        response = await client.post("/v1/auth/staff", json=wrong)
        assert response.status_code == 401 and slug(response) == "invalid-credentials"
    locking = await client.post("/v1/auth/staff", json=wrong)
    assert locking.status_code == 423 and slug(locking) == "account-locked"
    # Locked: even the right password is refused, and says when to come back.
    locked = await client.post("/v1/auth/staff", json=right)
    assert locked.status_code == 423 and slug(locked) == "account-locked"
    assert int(locked.headers["retry-after"]) > 0
    # The lock passes.
    async with services.db.transaction() as conn:
        await conn.execute(
            "UPDATE staff_users SET locked_until = now() - interval '1 second' WHERE id = $1",
            barista.id,
        )
    assert (await client.post("/v1/auth/staff", json=right)).status_code == 200
    row = await services.db.fetchrow(
        "SELECT failed_logins, locked_until FROM staff_users WHERE id = $1", barista.id
    )
    assert row["failed_logins"] == 0 and row["locked_until"] is None


async def pair_device(client: Client, demo: Demo, location: str = "mitte") -> dict[str, Any]:
    created = await client.post(
        "/v1/kiosk/devices",
        json={"location_id": str(demo.locations[location]), "name": "Till 1"},
        headers=bearer(demo.staff["manager"]),
    )
    assert created.status_code == 201, created.text
    code = created.json()["pairing_code"]
    assert len(code) == 8
    paired = await client.post("/v1/kiosk/devices/pair", json={"pairing_code": code.lower()})
    assert paired.status_code == 200, paired.text
    device = paired.json()
    assert device["location_id"] == str(demo.locations[location])
    assert device["location_name"] and device["device_secret"]
    return {**device, "pairing_code": code}


async def test_pairing_is_single_use_and_expires(client: Client, demo: Demo, services: Any) -> None:
    device = await pair_device(client, demo)
    again = await client.post(
        "/v1/kiosk/devices/pair", json={"pairing_code": device["pairing_code"]}
    )
    assert again.status_code == 404 and slug(again) == "pairing-code-invalid"

    created = await client.post(
        "/v1/kiosk/devices",
        json={"location_id": str(demo.locations["mitte"]), "name": "Till 2"},
        headers=bearer(demo.staff["manager"]),
    )
    async with services.db.transaction() as conn:
        await conn.execute(
            "UPDATE kiosk_devices SET pairing_expires_at = now() - interval '1 second'"
            " WHERE id = $1",
            uuid.UUID(created.json()["device_id"]),
        )
    expired = await client.post(
        "/v1/kiosk/devices/pair", json={"pairing_code": created.json()["pairing_code"]}
    )
    assert expired.status_code == 404 and slug(expired) == "pairing-code-invalid"


async def test_only_managers_register_devices(client: Client, demo: Demo) -> None:
    response = await client.post(
        "/v1/kiosk/devices",
        json={"location_id": str(demo.locations["mitte"]), "name": "Till"},
        headers=bearer(demo.staff["barista"]),
    )
    assert response.status_code == 403


async def test_pin_sign_in_is_scoped_to_the_device(
    client: Client, demo: Demo, services: Any
) -> None:
    device = await pair_device(client, demo, "mitte")
    response = await client.post(
        "/v1/auth/pin",
        json={
            "device_id": device["device_id"],
            "device_secret": device["device_secret"],
            "email": "barista@demo.regulars.test",
            "pin": DEMO_PIN,
        },
    )
    assert response.status_code == 200, response.text
    principal = services.tokens.verify(response.json()["access_token"])
    assert principal.role == "barista"
    assert principal.device_id == uuid.UUID(device["device_id"])
    assert principal.location_ids == frozenset({demo.locations["mitte"]})
    token = response.json()["access_token"]
    # The barista also works at the station, but this device's token does not reach it.
    station = await client.get(
        f"/v1/locations/{demo.locations['station']}/queue", headers=bearer(token)
    )
    assert station.status_code == 404
    mitte = await client.get(
        f"/v1/locations/{demo.locations['mitte']}/queue", headers=bearer(token)
    )
    assert mitte.status_code == 200
    audit = await services.db.fetchrow(
        "SELECT device_id FROM audit_log WHERE actor_id = $1 AND action = 'staff.sign_in'"
        " ORDER BY id DESC LIMIT 1",
        principal.subject_id,
    )
    assert audit["device_id"] == principal.device_id
    # Refreshing keeps the device and its location: the scope never widens.
    refreshed = await client.post(
        "/v1/auth/refresh", json={"refresh_token": response.json()["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    again = services.tokens.verify(refreshed.json()["access_token"])
    assert again.device_id == principal.device_id
    assert again.location_ids == frozenset({demo.locations["mitte"]})


async def test_pin_needs_a_paired_device(client: Client, demo: Demo) -> None:
    device = await pair_device(client, demo)
    response = await client.post(
        "/v1/auth/pin",
        json={
            "device_id": device["device_id"],
            "device_secret": "not-the-device-secret",
            "email": "barista@demo.regulars.test",
            "pin": DEMO_PIN,
        },
    )
    assert response.status_code == 401 and slug(response) == "device-not-paired"


async def test_pin_brute_force_is_locked_out(client: Client, demo: Demo, services: Any) -> None:
    # A fresh device, so the per-device count starts at zero; wrong PINs touch no staff row.
    device = await pair_device(client, demo, "mitte")
    body = {
        "device_id": device["device_id"],
        "device_secret": device["device_secret"],
        "email": "barista@demo.regulars.test",
    }
    # A wrong device secret is refused before it counts against the staff member.
    for _ in range(services.settings.pin_attempts_per_window):
        stranger = {**body, "device_secret": "not-the-device-secret", "pin": "9999"}
        response = await client.post("/v1/auth/pin", json=stranger)
        assert response.status_code == 401 and slug(response) == "device-not-paired"
    for attempt in range(services.settings.pin_attempts_per_window):
        response = await client.post("/v1/auth/pin", json={**body, "pin": f"9{attempt:03d}"})
        assert response.status_code == 401 and slug(response) == "wrong-pin"
    blocked = await client.post("/v1/auth/pin", json={**body, "pin": DEMO_PIN})
    assert blocked.status_code == 429 and slug(blocked) == "too-many-pin-attempts"
    assert int(blocked.headers["retry-after"]) > 0
    # The account itself is not locked: the password sign-in still works.
    signed_in = await client.post(
        "/v1/auth/staff", json={"email": body["email"], "password": DEMO_PASSWORD}
    )
    assert signed_in.status_code == 200


async def test_pin_attempts_are_limited_per_day_on_all_devices_together(
    settings: Any, notifier: Any, demo: Demo
) -> None:
    """A PIN has 10,000 values: the per-device limit alone let a tablet-holder (or several)
    try them all within days."""
    strict = msgspec.structs.replace(settings, pin_attempts_per_day=3)
    app = create_app(strict, notifier=notifier)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with Client(transport=transport, base_url="http://testserver") as client:
            services = app.state.services
            mitte = demo.locations["mitte"]
            barista = await make_staff(services, demo.brand_id, "barista", [mitte])
            devices = [await pair_device(client, demo, "mitte") for _ in range(2)]

            async def attempt(device: dict[str, Any], pin: str) -> Any:
                body = {
                    "device_id": device["device_id"],
                    "device_secret": device["device_secret"],
                    "email": barista.email,
                    "pin": pin,
                }
                return await client.post("/v1/auth/pin", json=body)

            for device in (devices[0], devices[0], devices[1]):
                assert (await attempt(device, "1111")).status_code == 401
            refused = await attempt(devices[1], PIN)
            assert refused.status_code == 429, refused.text
            assert slug(refused) == "too-many-pin-attempts-daily"


async def test_managers_cannot_sign_in_with_a_pin(client: Client, demo: Demo) -> None:
    """A PIN is no second factor, and managers and admins need one (the demo PIN is theirs
    too): refused before the PIN is even checked."""
    device = await pair_device(client, demo, "mitte")
    for email, pin in (
        ("manager@demo.regulars.test", DEMO_PIN),
        ("admin@demo.regulars.test", "0000"),
    ):
        response = await client.post(
            "/v1/auth/pin",
            json={
                "device_id": device["device_id"],
                "device_secret": device["device_secret"],
                "email": email,
                "pin": pin,
            },
        )
        assert response.status_code == 403 and slug(response) == "second-factor-required"


async def test_concurrent_wrong_passwords_get_no_more_checks_than_the_limit(
    client: Client, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock used to be read before the (slow) password check and the failure counted
    after it: a burst of guesses all had their password checked before any of them failed
    (a helper got the right password accepted inside a burst that locked the account)."""
    brand = await other_brand(services)
    barista = await make_staff(services, brand.brand_id, "barista", [brand.location_id])
    limit = services.settings.staff_max_failed_logins
    checked = []
    verify = services.staff._verify

    async def counted(stored_hash: Any, secret: str) -> bool:
        checked.append(secret)
        return bool(await verify(stored_hash, secret))

    monkeypatch.setattr(services.staff, "_verify", counted)
    wrong = {"email": barista.email, "password": "wrong password"}
    answers = await asyncio.gather(
        *(client.post("/v1/auth/staff", json=wrong) for _ in range(6 * limit))
    )
    assert len(checked) == limit  # the attempts the limit allows, no more
    statuses = Counter(response.status_code for response in answers)
    assert statuses[401] == limit - 1, statuses  # checked and wrong
    assert statuses[423] == 5 * limit + 1, statuses  # the locking one, then refused unchecked


async def test_pin_sign_in_refuses_while_attempts_cannot_be_counted(
    client: Client, demo: Demo, stack: Stack
) -> None:
    device = await pair_device(client, demo, "mitte")
    body = {
        "device_id": device["device_id"],
        "device_secret": device["device_secret"],
        "email": "barista@demo.regulars.test",
        "pin": DEMO_PIN,
    }
    stack.stop_redis()
    try:
        refused = await client.post("/v1/auth/pin", json=body)
    finally:
        stack.start_redis()
    # Without a counter a 4-digit PIN could be guessed freely: refuse rather than allow.
    assert refused.status_code == 503 and slug(refused) == "limit-unavailable"


@pytest.mark.parametrize(
    ("what_changed", "slug"),
    [
        # moved to another location: the device's location is no longer theirs
        ("moved", "invalid-refresh-token"),
        # promoted: a manager signs in with the password and TOTP, never with a PIN
        ("promoted", "second-factor-required"),
    ],
)
async def test_a_kiosk_session_ends_when_the_staff_member_no_longer_fits_it(
    client: Client, demo: Demo, services: Any, what_changed: str, slug: str
) -> None:
    """The refresh of a PIN session rechecks what the PIN sign-in checked; before, it carried
    the old scope and the PIN session on for as long as the kiosk kept refreshing."""
    device = await pair_device(client, demo, "mitte")
    barista = await make_staff(
        services, demo.brand_id, "barista", [demo.locations["mitte"], demo.locations["station"]]
    )
    signed_in = await client.post(
        "/v1/auth/pin",
        json={
            "device_id": device["device_id"],
            "device_secret": device["device_secret"],
            "email": barista.email,
            "pin": PIN,
        },
    )
    assert signed_in.status_code == 200, signed_in.text
    first = await client.post(
        "/v1/auth/refresh", json={"refresh_token": signed_in.json()["refresh_token"]}
    )
    assert first.status_code == 200, first.text

    async with services.db.transaction() as conn:
        if what_changed == "moved":
            await conn.execute(
                "UPDATE staff_users SET location_ids = $2 WHERE id = $1",
                barista.id,
                [demo.locations["station"]],
            )
        else:
            await conn.execute("UPDATE staff_users SET role = 'manager' WHERE id = $1", barista.id)
    refused = await client.post(
        "/v1/auth/refresh", json={"refresh_token": first.json()["refresh_token"]}
    )
    assert refused.status_code == 401, refused.text
    assert refused.json()["type"].endswith(f"/{slug}")
    # the whole session is over, not only this attempt: every token of it is revoked
    live = await services.db.fetchval(
        "SELECT count(*) FROM refresh_tokens WHERE subject_id = $1 AND revoked_at IS NULL",
        barista.id,
    )
    assert live == 0
