"""Limits where SMS cost or access is at stake (issue 21, findings 4 and 5): one-time codes
per client address, per brand and under a global budget that fails closed; wrong codes per
client across phones; staff sign-in slowed per client rather than locked per email.

Clients are told apart by X-Forwarded-For, believed here because the test client's peer
(127.0.0.1) is made a trusted proxy; each test uses addresses no other test counted against.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.settings import Settings
from tests.conftest import Client, Stack, app_client, new_phone

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
    for key in [k async for k in gate.client.scan_iter("rg:limit:codes:*")]:
        if not key.startswith("rg:limit:codes:client:"):
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
