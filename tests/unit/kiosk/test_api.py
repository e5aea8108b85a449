"""KioskApi over httpx.MockTransport: problem parsing, offline detection, keys, token refresh."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

import httpx
import pytest

from kiosk.api import ApiProblem, KioskApi, Offline
from shared import contract

GUEST = UUID("0190f0a0-0000-7000-8000-0000000000aa")
LOCATION = UUID("0190f0a0-0000-7000-8000-000000000001")


def transfer_json(**kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "id": str(uuid4()),
        "guest_id": str(GUEST),
        "code": "earn",
        "points": 4,
        "state": "posted",
        "created_at": "2025-03-04T08:30:00Z",
        "points_available": 424,
    }
    body.update(kw)
    return body


def api_with(handler: httpx.MockTransport) -> KioskApi:
    api = KioskApi("http://kiosk.test/", transport=handler)
    api.tokens = contract.TokenPair(access_token="old", refresh_token="r" * 12, expires_in=900)
    return api


async def test_problem_json_becomes_a_problem_with_its_slug() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422,
            json={"type": "https://docs.regulars.dev/problems/qr-expired", "detail": "too old"},
            headers={"content-type": "application/problem+json"},
        )

    api = api_with(httpx.MockTransport(handler))
    with pytest.raises(ApiProblem) as caught:
        await api.scan("RG1:X")
    assert (caught.value.status, caught.value.slug, caught.value.detail) == (
        422,
        "qr-expired",
        "too old",
    )


async def test_a_non_json_error_still_becomes_a_problem() -> None:
    api = api_with(httpx.MockTransport(lambda r: httpx.Response(418, text="<html>")))
    with pytest.raises(ApiProblem) as caught:
        await api.scan("x")
    assert caught.value.slug == "http-418"


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_mean_offline(status: int) -> None:
    api = api_with(httpx.MockTransport(lambda r: httpx.Response(status)))
    with pytest.raises(Offline):
        await api.scan("x")


async def test_connection_refused_means_offline() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api = api_with(httpx.MockTransport(handler))
    with pytest.raises(Offline):
        await api.scan("x")
    assert await api.health() is False


async def test_accrual_sends_the_idempotency_key_and_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=transfer_json())

    api = api_with(httpx.MockTransport(handler))
    body = contract.AccrualIn(amount_paid_minor=450, location_id=LOCATION, receipt_ref="R-1")
    result = await api.accrue(GUEST, body, "0190f0a0-0000-7000-8000-00000000beef")
    assert result.points == 4
    [request] = seen
    assert request.url.path == f"/v1/guests/{GUEST}/accruals"
    assert request.headers["idempotency-key"] == "0190f0a0-0000-7000-8000-00000000beef"
    assert request.headers["authorization"] == "Bearer old"
    assert json.loads(request.content)["amount_paid_minor"] == 450


async def test_an_expired_token_is_refreshed_once_and_the_call_repeated() -> None:
    calls: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v1/auth/refresh":
            return httpx.Response(
                200, json={"access_token": "new", "refresh_token": "s" * 12, "expires_in": 900}
            )
        if request.headers.get("authorization") == "Bearer old":
            return httpx.Response(401, json={"type": "x/invalid-token", "detail": "expired"})
        return httpx.Response(200, json=[])

    api = api_with(httpx.MockTransport(handler))
    assert await api.queue(LOCATION) == []
    assert [c[0] for c in calls] == [
        f"/v1/locations/{LOCATION}/queue",
        "/v1/auth/refresh",
        f"/v1/locations/{LOCATION}/queue",
    ]
    assert calls[-1][1] == "Bearer new"


def test_live_queue_url_carries_the_token_and_scheme() -> None:
    api = KioskApi("https://api.regulars.test/base")
    api.tokens = contract.TokenPair(access_token="tok", refresh_token="r" * 12, expires_in=1)
    assert api.live_queue_url(LOCATION) == (
        f"wss://api.regulars.test/base/v1/locations/{LOCATION}/queue/live?token=tok"
    )
