"""A revoked session ends its access tokens too (issue 21, finding 6): a reused refresh
token, or signing out, and the access tokens of that refresh-token family stop working at
once, in Litestar and in the checkout's lane, also while Redis is down."""

from __future__ import annotations

from typing import Any

import msgspec

from server.auth.notifier import RecordingNotifier
from server.seed.demo import DEMO_PASSWORD
from server.settings import Settings
from server.worker import run_once
from tests.api.helpers import menu_items, order_body, place
from tests.api.staff_support import bearer
from tests.api.test_redis_faults import wait_for_redis
from tests.conftest import Client, Demo, GuestHandle, Stack, app_client, sign_in


def slug(response: Any) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def refreshed_guest(client: Client, notifier: RecordingNotifier) -> tuple[str, str]:
    """(access token, refresh token) of a fresh guest session, refreshed once."""
    phone_guest = await sign_in(client, notifier)
    # sign_in keeps only the access token: sign in again by code for the whole pair.
    sent = await client.post("/v1/auth/otp", json={"phone": phone_guest.phone})
    assert sent.status_code == 202
    verified = await client.post(
        "/v1/auth/otp/verify",
        json={"phone": phone_guest.phone, "code": notifier.codes[phone_guest.phone]},
    )
    assert verified.status_code == 200, verified.text
    pair = verified.json()
    return pair["access_token"], pair["refresh_token"]


async def test_a_reused_refresh_token_ends_the_familys_access_tokens(
    client: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    access, refresh = await refreshed_guest(client, notifier)
    rotated = await client.post("/v1/auth/refresh", json={"refresh_token": refresh})
    assert rotated.status_code == 200, rotated.text
    newer = rotated.json()["access_token"]
    for token in (access, newer):
        assert (await client.get("/v1/me", headers=bearer(token))).status_code == 200
    reused = await client.post("/v1/auth/refresh", json={"refresh_token": refresh})
    assert reused.status_code == 401 and slug(reused) == "refresh-token-reused"
    for token in (access, newer):
        me = await client.get("/v1/me", headers=bearer(token))
        assert me.status_code == 401 and slug(me) == "invalid-token", me.text
    # The checkout's lane refuses it too.
    items = await menu_items(client, demo.locations["station"])
    guest = GuestHandle(id=None, token=newer, phone="")  # type: ignore[arg-type]
    order = await place(client, guest, order_body(demo, items, ("CRO", 1)))
    assert order.status_code == 401 and slug(order) == "invalid-token", order.text


async def test_guest_sign_out_ends_the_session(client: Client, notifier: RecordingNotifier) -> None:
    access, refresh = await refreshed_guest(client, notifier)
    other_access, _ = await refreshed_guest(client, notifier)
    out = await client.post("/v1/auth/signout", headers=bearer(access))
    assert out.status_code == 204, out.text
    me = await client.get("/v1/me", headers=bearer(access))
    assert me.status_code == 401 and slug(me) == "invalid-token"
    again = await client.post("/v1/auth/refresh", json={"refresh_token": refresh})
    assert again.status_code == 401
    # Another session is untouched.
    assert (await client.get("/v1/me", headers=bearer(other_access))).status_code == 200


async def test_staff_sign_out_ends_the_session(client: Client) -> None:
    signed_in = await client.post(
        "/v1/auth/staff",
        json={"email": "barista@demo.regulars.test", "password": DEMO_PASSWORD},
    )
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["access_token"]
    queue = "/v1/kiosk/scan"
    assert (await client.post(queue, json={"code": "x"}, headers=bearer(token))).status_code != 401
    assert (await client.post("/v1/auth/signout", headers=bearer(token))).status_code == 204
    after = await client.post(queue, json={"code": "x"}, headers=bearer(token))
    assert after.status_code == 401 and slug(after) == "invalid-token"


async def test_revocation_holds_while_redis_is_down(
    client: Client, notifier: RecordingNotifier, services: Any, stack: Stack
) -> None:
    access, _ = await refreshed_guest(client, notifier)
    kept, _ = await refreshed_guest(client, notifier)
    assert (await client.post("/v1/auth/signout", headers=bearer(access))).status_code == 204
    await services.gate.client.flushall()  # Redis forgot the denial: PostgreSQL still knows
    stack.stop_redis()
    try:
        me = await client.get("/v1/me", headers=bearer(access))
        assert me.status_code == 401 and slug(me) == "invalid-token"
        assert (await client.get("/v1/me", headers=bearer(kept))).status_code == 200
    finally:
        stack.start_redis()
    await wait_for_redis(services)


async def test_tokens_without_a_session_cannot_sign_out(client: Client, demo: Demo) -> None:
    refused = await client.post("/v1/auth/signout", headers=bearer(demo.staff["barista"]))
    assert refused.status_code == 409 and slug(refused) == "no-session"
    assert (await client.post("/v1/auth/signout")).status_code == 401


def unique_client() -> str:
    """An address no other test counted against (documentation range, RFC 5737)."""
    return f"198.51.100.{next(_clients)}"


_clients = iter(range(1, 255))


async def test_pairing_codes_cannot_be_guessed_without_limit(
    settings: Settings, notifier: RecordingNotifier, demo: Demo
) -> None:
    limited = msgspec.structs.replace(
        settings, pair_attempts_per_window=3, trusted_proxies="127.0.0.1/32"
    )
    async with app_client(limited, notifier) as client:
        guesser = {"X-Forwarded-For": unique_client()}
        for _ in range(3):
            wrong = await client.post(
                "/v1/kiosk/devices/pair", json={"pairing_code": "ABCDEFGH"}, headers=guesser
            )
            assert wrong.status_code == 404 and slug(wrong) == "pairing-code-invalid"
        refused = await client.post(
            "/v1/kiosk/devices/pair", json={"pairing_code": "ABCDEFGH"}, headers=guesser
        )
        assert refused.status_code == 429 and slug(refused) == "too-many-pairing-attempts"
        assert int(refused.headers["retry-after"]) > 0
        # Another client is not held back by the guesser.
        other = await client.post(
            "/v1/kiosk/devices/pair",
            json={"pairing_code": "ABCDEFGH"},
            headers={"X-Forwarded-For": unique_client()},
        )
        assert other.status_code == 404


async def test_a_sign_out_while_redis_was_down_is_denied_in_redis_once_it_is_back(
    client: Client, notifier: RecordingNotifier, services: Any, stack: Stack
) -> None:
    access, _ = await refreshed_guest(client, notifier)
    stack.stop_redis()
    try:
        assert (await client.post("/v1/auth/signout", headers=bearer(access))).status_code == 204
    finally:
        stack.start_redis()
    await wait_for_redis(services)
    await services.gate.client.flushall()  # the restarted Redis knows nothing of it
    done = await run_once(services, slow=False, relay=False)
    assert done["revoked_sessions"] >= 1
    me = await client.get("/v1/me", headers=bearer(access))
    assert me.status_code == 401 and slug(me) == "invalid-token"
