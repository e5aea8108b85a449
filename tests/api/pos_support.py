"""Test helpers for the POS routes: an integration made through the admin API, and a till
that signs its requests the way DESIGN §10 says (HMAC-SHA256 over "<t>." + raw body)."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx

from shared.pos_signing import signature as sign
from tests.conftest import Client, Demo

_external_ids = itertools.count(1)


def external_id(prefix: str = "R") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}-{next(_external_ids)}"


def slug(response: httpx.Response) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


@dataclass
class SignedTill:
    client: Client
    integration_id: str
    key_id: str
    secret: str
    location_id: uuid.UUID
    # Identical bodies sent in a row must still carry distinct signatures (a reused one is
    # refused): each (body, t) is used once, stepping t back a second at a time. Replays are
    # made on purpose by reusing ``signed_headers``.
    _used: ClassVar[set[tuple[bytes, int]]] = set()

    def signed_headers(
        self, body: bytes, *, t: int | None = None, secret: str | None = None
    ) -> dict[str, str]:
        stamp = t
        if stamp is None:
            stamp, digest = int(time.time()), hashlib.sha256(body).digest()
            while (digest, stamp) in self._used:
                stamp -= 1
            self._used.add((digest, stamp))
        return {
            "X-Regulars-Key": self.key_id,
            "X-Regulars-Signature": sign(secret or self.secret, stamp, body),
            "Content-Type": "application/json",
        }

    async def post(
        self,
        path: str,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        t: int | None = None,
    ) -> httpx.Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        sent = {**self.signed_headers(body, t=t), **(headers or {})}
        return await self.client.post(path, content=body, headers=sent)

    async def receipt(self, payload: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return await self.post("/v1/pos/receipts", payload, **kwargs)


def admin(demo: Demo) -> dict[str, str]:
    return {"Authorization": f"Bearer {demo.staff['admin']}"}


async def new_till(client: Client, demo: Demo, location: str = "station") -> SignedTill:
    response = await client.post(
        "/v1/pos/integrations",
        json={"location_id": str(demo.locations[location])},
        headers=admin(demo),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return SignedTill(
        client, body["integration_id"], body["key_id"], body["secret"], demo.locations[location]
    )


def receipt_body(
    till: SignedTill,
    *lines: dict[str, Any],
    payments: list[dict[str, Any]] | None = None,
    guest: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "external_id": external_id(),
        "location_id": str(till.location_id),
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
        "lines": list(lines) or [{"sku": "CAP", "name": "Cappuccino", "unit_price_minor": 380}],
        "payments": payments if payments is not None else [],
        **extra,
    }
    if guest is not None:
        body["guest"] = guest
    return body


async def points_of_receipts(services: Any, guest_id: uuid.UUID) -> int:
    """What receipts credited to the guest: earn transfers minus reversals (PostgreSQL)."""
    async with services.db.connection() as conn:
        value = await conn.fetchval(
            "SELECT coalesce(sum(CASE WHEN t.credit_account_id = a.id THEN t.amount"
            " ELSE -t.amount END), 0)::bigint"
            " FROM transfers t JOIN accounts a ON a.guest_id = $1"
            " WHERE t.code IN ('earn', 'refund_reversal')"
            " AND (t.credit_account_id = a.id OR t.debit_account_id = a.id)",
            guest_id,
        )
    return int(value)
