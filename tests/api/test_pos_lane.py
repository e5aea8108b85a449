"""A till's receipt lane (server/pos/lane.py) answers exactly as the Litestar route does.

Every case runs twice, through an app with the lane and through one without it (both over the
same database, each with a till of its own), and the answers must match: status, headers
(less the request id and the date) and body, ids aside. The lane must also really serve a
plain receipt, and pass on the rest.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.settings import Settings
from tests.api.pos_support import SignedTill, new_till, receipt_body
from tests.api.test_http_edge import server_errors
from tests.conftest import Client, Demo, GuestHandle, app_client, sign_in


@pytest.fixture
async def without_lane(settings: Settings, notifier: RecordingNotifier) -> AsyncIterator[Client]:
    """The same app with every receipt going through Litestar (Settings.pos_receipt_lane off)."""
    async with app_client(
        msgspec.structs.replace(settings, pos_receipt_lane=False), notifier
    ) as test_client:
        yield test_client


PATH = "/v1/pos/receipts"
# A case sends what it sends with a till of the app under test; its last answer is compared.
Case = Callable[[SignedTill, GuestHandle], Awaitable[httpx.Response]]


async def post(till: SignedTill, body: bytes | Any, headers: Any) -> httpx.Response:
    # Bounded: a lane that swallowed the body would leave Litestar waiting for it forever.
    async with asyncio.timeout(30):
        return await till.client.post(PATH, content=body, headers=headers)


async def signed(till: SignedTill, raw: bytes, **headers: str) -> httpx.Response:
    return await post(till, raw, {**till.signed_headers(raw), **headers})


def raw(till: SignedTill, **extra: Any) -> bytes:
    return json.dumps(receipt_body(till, **extra)).encode()


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    """A body without Content-Length, in two chunks."""
    yield body[:10]
    yield body[10:]


async def replayed_signature(till: SignedTill, _: GuestHandle) -> httpx.Response:
    body = raw(till)
    headers = till.signed_headers(body)
    first = await post(till, body, headers)
    assert first.status_code == 201, first.text
    return await post(till, body, headers)


async def resent(till: SignedTill, _: GuestHandle) -> httpx.Response:
    body = raw(till)
    first = await signed(till, body)
    again = await signed(till, body)
    assert again.content == first.content
    return again


async def conflict(till: SignedTill, _: GuestHandle) -> httpx.Response:
    body = receipt_body(till)
    await signed(till, json.dumps(body).encode())
    other = {**body, "lines": [{"sku": "LAT", "name": "Latte", "unit_price_minor": 420}]}
    return await signed(till, json.dumps(other).encode())


async def tampered(till: SignedTill, _: GuestHandle) -> httpx.Response:
    body = receipt_body(till)
    changed = json.dumps({**body, "external_id": body["external_id"] + "X"}).encode()
    return await post(till, changed, till.signed_headers(json.dumps(body).encode()))


async def doubled_key(till: SignedTill, _: GuestHandle) -> httpx.Response:
    body = raw(till)
    headers = [*till.signed_headers(body).items(), ("X-Regulars-Key", "rk_other")]
    return await post(till, body, headers)


def at(offset_s: int) -> Case:
    async def send(till: SignedTill, _: GuestHandle) -> httpx.Response:
        body = raw(till)
        return await post(till, body, till.signed_headers(body, t=int(time.time()) + offset_s))

    return send


def body_of(make: Callable[[SignedTill, GuestHandle], bytes], **headers: str) -> Case:
    async def send(till: SignedTill, guest: GuestHandle) -> httpx.Response:
        return await signed(till, make(till, guest), **headers)

    return send


def revoked_after_use(how: str, **extra: Any) -> Case:
    """A receipt signed by a key that signed one before (the lane knows it), after the key was
    revoked or its integration disabled behind the API's back."""

    async def send(till: SignedTill, guest: GuestHandle) -> httpx.Response:
        for named in (None, {"phone": guest.phone}):  # the guest's profile is then started
            first = await signed(till, raw(till, guest=named))
            assert first.status_code == 201, first.text
        db = till.client.app.state.services.db
        if how == "key":
            await db.fetchval(
                "UPDATE pos_keys SET revoked_at = now() WHERE key_id = $1", till.key_id
            )
        else:
            await db.fetchval(
                "UPDATE pos_integrations SET disabled_at = now() WHERE id = $1",
                uuid.UUID(till.integration_id),
            )
        fields = {k: v for k, v in extra.items() if k != "guest"}
        if extra.get("guest"):
            fields["guest"] = {"phone": guest.phone}
        return await signed(till, raw(till, **fields))

    return send


CASES: dict[str, Case] = {
    "key revoked after a sale": revoked_after_use("key"),
    "key revoked after a sale, naming a guest": revoked_after_use("key", guest=True),
    "integration disabled after a sale": revoked_after_use("integration"),
    "integration disabled, naming a guest": revoked_after_use("integration", guest=True),
    "key revoked, another location": revoked_after_use("key", location_id=str(uuid.uuid4())),
    "key revoked, a refund": revoked_after_use("key", refund_of="nope"),
    "anonymous sale": body_of(lambda t, g: raw(t)),
    "sale naming a guest by phone": body_of(lambda t, g: raw(t, guest={"phone": g.phone})),
    "sale naming an unknown phone": body_of(lambda t, g: raw(t, guest={"phone": "+4915550000"})),
    "receipt sent again, signed afresh": resent,
    "another receipt under the same id": conflict,
    "refund of an unknown sale": body_of(lambda t, g: raw(t, refund_of="nope")),
    "another location": body_of(lambda t, g: raw(t, location_id=str(uuid.uuid4()))),
    "occurred_at without an offset": body_of(lambda t, g: raw(t, occurred_at=datetime.now())),
    "another currency": body_of(lambda t, g: raw(t, currency="JPY")),
    "tampered body": tampered,
    "signature too old": at(-301),
    "signature from the future": at(600),
    "signature used before": replayed_signature,
    "unknown key": lambda t, g: post(
        t, raw(t), {**t.signed_headers(raw(t)), "X-Regulars-Key": "rk_unknown"}
    ),
    "wrong secret": lambda t, g: post(
        t, raw(t), {**t.signed_headers(raw(t), secret="wrong"), "Content-Type": "application/json"}
    ),
    "no signature": lambda t, g: post(t, raw(t), {"Content-Type": "application/json"}),
    "malformed signature": body_of(lambda t, g: raw(t), **{"X-Regulars-Signature": "v1=zz"}),
    "two keys": doubled_key,
    "malformed JSON": body_of(lambda t, g: b'{"external_id": '),
    "malformed JSON, badly signed": lambda t, g: post(
        t, b'{"external_id": ', t.signed_headers(b"{}")
    ),
    "not UTF-8": body_of(lambda t, g: raw(t).replace(b'"Cappuccino"', b'"Capp\xffccino"')),
    "not an object": body_of(lambda t, g: json.dumps([receipt_body(t)]).encode()),
    "price as a string": body_of(
        lambda t, g: raw(t).replace(b'"unit_price_minor": 380', b'"unit_price_minor": "380"')
    ),
    "no lines field": body_of(lambda t, g: b'{"external_id": "x"}'),
    "text/plain body": body_of(lambda t, g: raw(t), **{"Content-Type": "text/plain"}),
    "too long for the route": body_of(
        lambda t, g: raw(t, lines=[{"name": "x" * 200, "unit_price_minor": 1}] * 400)
    ),
    "chunked body": lambda t, g: post(t, chunked(raw(t)), t.signed_headers(raw(t))),
}
_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_OWN = {"receipt_id", "guest_id", "claim_code"}


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    # The length follows the ids in the body; it must still be the body's own.
    assert int(response.headers["content-length"]) == len(response.content)
    headers = sorted(
        (k, v)
        for k, v in response.headers.items()
        if k not in ("x-request-id", "date", "content-length")
    )
    body = json.loads(_ID.sub(b"<id>", response.content))
    if isinstance(body, dict):
        body = {k: (v if k not in _OWN or v is None else "<own>") for k, v in body.items()}
        if isinstance(body.get("detail"), str):  # names the till's own external ids
            body["detail"] = re.sub(r"R-[0-9a-f]{12}-\d+", "<ext>", body["detail"])
    return response.status_code, headers, body


async def served_by(client: Client) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    found = re.findall(r'regulars_pos_receipt_lane_total\{served_by="(\w+)"\} ([\d.e+]+)', text)
    return {who: float(n) for who, n in found}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_lane_answers_as_the_route_does(
    case: str, client: Client, without_lane: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    answers = []
    for app in (client, without_lane):
        till = await new_till(app, demo)
        guest = await sign_in(app, notifier)
        answers.append(comparable(await CASES[case](till, guest)))
    assert answers[0] == answers[1]


async def test_the_lane_serves_a_receipt_and_passes_on_the_rest(client: Client, demo: Demo) -> None:
    till = await new_till(client, demo)
    before = await served_by(client)
    taken = await signed(till, raw(till))
    assert taken.status_code == 201, taken.text
    after_one = await served_by(client)
    assert after_one["lane"] == before.get("lane", 0) + 1
    refused = await signed(till, b'{"external_id": ')
    assert refused.status_code == 400, refused.text
    after_two = await served_by(client)
    assert after_two["litestar"] == before.get("litestar", 0) + 1
    assert after_two["lane"] == after_one["lane"]


async def test_the_lane_checks_a_signature_once(client: Client, demo: Demo) -> None:
    """A body the lane passes on reached Litestar with its signature not yet remembered, so the
    route answers what is wrong with the body, not 'signature-replayed'."""
    till = await new_till(client, demo)
    body = raw(till).replace(b'"unit_price_minor": 380', b'"unit_price_minor": "380"')
    refused = await signed(till, body)
    assert refused.status_code in (400, 422), refused.text
    assert "replayed" not in refused.text


@pytest.mark.parametrize("lane", [True, False])
async def test_an_error_in_the_intake_is_a_counted_problem_either_way(
    lane: bool,
    client: Client,
    without_lane: Client,
    demo: Demo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = client if lane else without_lane

    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    till = await new_till(app, demo)
    before = await server_errors(app)
    monkeypatch.setattr(app.app.state.services.intake, "take", broken)
    response = await signed(till, raw(till))
    monkeypatch.undo()
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "a bug" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert await server_errors(app) == before + 1
