"""Limits where SMS cost or access is at stake (issue 21, findings 4 and 5): one-time codes
per client address, per brand and under a global budget that fails closed; wrong codes per
client across phones; staff sign-in slowed per client rather than locked per email.

Clients are told apart by X-Forwarded-For, believed here because the test client's peer
(127.0.0.1) is made a trusted proxy; each test uses addresses no other test counted against.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pyotp
import pytest

from server.auth.notifier import RecordingNotifier
from server.settings import Settings
from server.staff.throttle import THROTTLED
from tests.api.staff_support import PASSWORD, PIN, make_staff, other_brand
from tests.api.test_redis_faults import wait_for_redis
from tests.conftest import Client, Demo, Stack, app_client, new_phone

_addresses = itertools.count(1)


def new_client() -> dict[str, str]:
    """Headers of a client address no other test used (RFC 5737 documentation range)."""
    n = next(_addresses)
    return {"X-Forwarded-For": f"203.0.113.{n % 250 + 1}, 10.9.{n // 250}.1"}


def slug(response: Any) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        trusted_proxies="127.0.0.1/32, 10.9.0.0/16",
        otp_sends_per_client_per_hour=3,
        otp_wrong_codes_per_client_per_hour=3,
    )


@pytest.fixture
async def strict_client(limited: Settings, notifier: RecordingNotifier) -> AsyncIterator[Client]:
    async with app_client(limited, notifier) as client:
        yield client


async def forget_code_budgets(gate: Any) -> None:
    """Start the brand's and the global hourly budget from 0 (other tests spent some)."""
    for key in [k async for k in gate.client.scan_iter("rg:limit:{codes}:*")]:
        if not key.startswith("rg:limit:{codes}:client:"):
            await gate.client.delete(key)


async def send(client: Client, headers: dict[str, str], phone: str | None = None) -> Any:
    return await client.post("/v1/auth/otp", json={"phone": phone or new_phone()}, headers=headers)


async def test_codes_are_limited_per_client_address(strict_client: Client) -> None:
    pumping = new_client()
    for _ in range(3):
        assert (await send(strict_client, pumping)).status_code == 202
    refused = await send(strict_client, pumping)
    assert refused.status_code == 429 and slug(refused) == "too-many-codes", refused.text
    assert int(refused.headers["retry-after"]) > 0
    # Another client is served; a header from an untrusted peer is not believed.
    assert (await send(strict_client, new_client())).status_code == 202


async def test_the_brand_and_the_global_budget_cap_all_clients(
    limited: Settings, notifier: RecordingNotifier
) -> None:
    for budget in ("otp_sends_per_brand_per_hour", "otp_sends_global_per_hour"):
        settings = msgspec.structs.replace(limited, **{budget: 2})
        async with app_client(settings, notifier) as client:
            gate = client.app.state.services.gate
            await forget_code_budgets(gate)
            assert (await send(client, new_client())).status_code == 202
            assert (await send(client, new_client())).status_code == 202
            refused = await send(client, new_client())
            assert refused.status_code == 429 and slug(refused) == "too-many-codes", budget
            await forget_code_budgets(gate)


async def test_no_code_is_sent_while_the_budget_cannot_be_counted(
    strict_client: Client, notifier: RecordingNotifier, stack: Stack
) -> None:
    phone = new_phone()
    stack.stop_redis()
    try:
        refused = await send(strict_client, new_client(), phone)
        assert refused.status_code == 503, refused.text
    finally:
        stack.start_redis()
    await wait_for_redis(strict_client.app.state.services)
    assert phone not in notifier.codes


async def test_wrong_codes_are_limited_per_client_across_phones(
    strict_client: Client, notifier: RecordingNotifier
) -> None:
    phones = [new_phone() for _ in range(4)]
    for phone in phones:
        assert (await send(strict_client, new_client(), phone)).status_code == 202
    guesser = new_client()
    for phone in phones[:3]:
        wrong = "000000" if notifier.codes[phone] != "000000" else "111111"
        guess = await strict_client.post(
            "/v1/auth/otp/verify", json={"phone": phone, "code": wrong}, headers=guesser
        )
        assert guess.status_code == 401 and slug(guess) == "wrong-code"
    refused = await strict_client.post(
        "/v1/auth/otp/verify", json={"phone": phones[3], "code": "123456"}, headers=guesser
    )
    assert refused.status_code == 429 and slug(refused) == "too-many-wrong-codes"
    # The guest of that phone, on their own connection, still signs in.
    ok = await strict_client.post(
        "/v1/auth/otp/verify",
        json={"phone": phones[3], "code": notifier.codes[phones[3]]},
        headers=new_client(),
    )
    assert ok.status_code == 200, ok.text


# -- staff sign-in: slowed per client, not locked per email (finding 5) ----------------------


def throttled(source: str, outcome: str) -> float:
    return float(THROTTLED.labels(source, outcome)._value.get())


@pytest.fixture
def sign_in_limited(limited: Settings) -> Settings:
    return msgspec.structs.replace(
        limited,
        staff_sign_in_free_failures=2,
        staff_sign_in_first_delay_s=600,  # long enough that the test never sees it pass
        staff_sign_in_failures_per_client=3,
        staff_max_failed_logins=3,
    )


async def test_wrong_passwords_slow_down_their_client_not_the_staff_member(
    sign_in_limited: Settings, notifier: RecordingNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    settings = msgspec.structs.replace(
        sign_in_limited, staff_sign_in_failures_per_client=10, staff_max_failed_logins=10
    )
    async with app_client(settings, notifier) as client:
        services = client.app.state.services
        brand = await other_brand(services)
        barista = await make_staff(services, brand.brand_id, "barista", [brand.location_id])
        wrong = {"email": barista.email, "password": "wrong password"}
        attacker = new_client()
        slowed_before = throttled("client", "slowed")
        for _ in range(2):  # the free failures
            response = await client.post("/v1/auth/staff", json=wrong, headers=attacker)
            assert response.status_code == 401 and slug(response) == "invalid-credentials"
        with caplog.at_level(logging.WARNING, logger="regulars.staff.security"):
            third = await client.post("/v1/auth/staff", json=wrong, headers=attacker)
        assert third.status_code == 401
        slowed = await client.post("/v1/auth/staff", json=wrong, headers=attacker)
        assert slowed.status_code == 429 and slug(slowed) == "sign-in-slowed", slowed.text
        assert int(slowed.headers["retry-after"]) > 0
        # Alerted: a metric and a log line with fields, not a lock.
        assert throttled("client", "slowed") == slowed_before + 1
        fields = [getattr(r, "fields", {}) for r in caplog.records]
        assert {"event": "sign_in_throttled", "source": "client", "outcome": "slowed"}.items() <= (
            fields[-1].items()
        )
        # The staff member, from their own address, signs in.
        right = {"email": barista.email, "password": PASSWORD}
        mine = await client.post("/v1/auth/staff", json=right, headers=new_client())
        assert mine.status_code == 200, mine.text


async def test_a_client_is_stopped_for_the_window_after_its_failures(
    sign_in_limited: Settings, notifier: RecordingNotifier
) -> None:
    settings = msgspec.structs.replace(
        sign_in_limited, staff_sign_in_free_failures=10, staff_max_failed_logins=100
    )
    async with app_client(settings, notifier) as client:
        attacker = new_client()
        for n in range(3):
            wrong = {"email": f"nobody-{n}@demo.regulars.test", "password": "x"}
            response = await client.post("/v1/auth/staff", json=wrong, headers=attacker)
            assert response.status_code == 401
        stopped = await client.post(
            "/v1/auth/staff",
            json={"email": "nobody@demo.regulars.test", "password": "x"},
            headers=attacker,
        )
        assert stopped.status_code == 429 and slug(stopped) == "too-many-sign-ins"


async def test_the_second_factor_gets_through_a_locked_email(
    sign_in_limited: Settings, notifier: RecordingNotifier
) -> None:
    async with app_client(sign_in_limited, notifier) as client:
        services = client.app.state.services
        brand = await other_brand(services)
        secret = pyotp.random_base32()
        manager = await make_staff(services, brand.brand_id, "manager", totp_secret=secret)
        wrong = {"email": manager.email, "password": "wrong password"}
        locked_before = throttled("email", "locked")
        answers = [
            await client.post("/v1/auth/staff", json=wrong, headers=new_client())
            for _ in range(sign_in_limited.staff_max_failed_logins)
        ]
        assert answers[-1].status_code == 423 and slug(answers[-1]) == "account-locked"
        assert throttled("email", "locked") == locked_before + 1
        right = {"email": manager.email, "password": PASSWORD}
        # Locked: the password alone is refused, unchecked; so is a wrong code.
        alone = await client.post("/v1/auth/staff", json=right, headers=new_client())
        assert alone.status_code == 423
        bad_code = f"{(int(pyotp.TOTP(secret).now()) + 500_000) % 1_000_000:06d}"
        guessed = await client.post(
            "/v1/auth/staff", json={**right, "totp": bad_code}, headers=new_client()
        )
        assert guessed.status_code == 423
        # The right password with the right code gets through, and clears the lock.
        through = await client.post(
            "/v1/auth/staff", json={**right, "totp": pyotp.TOTP(secret).now()}, headers=new_client()
        )
        assert through.status_code == 200, through.text
        row = await services.db.fetchrow(
            "SELECT failed_logins, locked_until FROM staff_users WHERE id = $1", manager.id
        )
        assert row["failed_logins"] == 0 and row["locked_until"] is None


async def test_wrong_pins_slow_the_device_and_a_password_lock_spares_the_pin(
    sign_in_limited: Settings, notifier: RecordingNotifier, demo: Demo
) -> None:
    settings = msgspec.structs.replace(sign_in_limited, pin_attempts_per_window=3)
    async with app_client(settings, notifier) as client:
        services = client.app.state.services
        mitte = demo.locations["mitte"]
        staff = [await make_staff(services, demo.brand_id, "barista", [mitte]) for _ in range(3)]
        tablet, other_tablet = [await pair_device(client, demo) for _ in range(2)]

        async def pin(device: dict[str, Any], email: str, value: str) -> Any:
            body = {"device_id": device["device_id"], "device_secret": device["device_secret"],
                    "email": email, "pin": value}  # fmt: skip
            return await client.post("/v1/auth/pin", json=body)

        # Wrong PINs spread over two colleagues: no one's own limit is reached ...
        for member in (staff[0], staff[1], staff[0], staff[1]):
            assert (await pin(tablet, member.email, "0000")).status_code == 401
        # ... but the tablet is slowed down, for a while, not locked for good.
        slowed = await pin(tablet, staff[2].email, PIN)
        assert slowed.status_code == 429 and slug(slowed) == "sign-in-slowed", slowed.text
        assert (await pin(other_tablet, staff[2].email, PIN)).status_code == 200
        # A password lock on an email (anyone can cause one) does not stop that PIN.
        wrong = {"email": staff[2].email, "password": "wrong password"}
        for _ in range(settings.staff_max_failed_logins):
            await client.post("/v1/auth/staff", json=wrong, headers=new_client())
        assert (await pin(other_tablet, staff[2].email, PIN)).status_code == 200


async def pair_device(client: Client, demo: Demo) -> dict[str, Any]:
    created = await client.post(
        "/v1/kiosk/devices",
        json={"location_id": str(demo.locations["mitte"]), "name": "Till"},
        headers={"Authorization": f"Bearer {demo.staff['manager']}"},
    )
    assert created.status_code == 201, created.text
    paired = await client.post(
        "/v1/kiosk/devices/pair",
        json={"pairing_code": created.json()["pairing_code"]},
        headers=new_client(),
    )
    assert paired.status_code == 200, paired.text
    return dict(paired.json())
