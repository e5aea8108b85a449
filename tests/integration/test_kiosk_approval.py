"""The kiosk against the real server: a barista's accrual over their role's limit (issue 21,
finding 2) is refused, waits in the outbox, and a shift lead's PIN on the same paired tablet
makes it: the ledger holds exactly one accrual and the audit log names the shift lead.

The demo programme's own limits apply (the suite does not lift accrual limits); the barista
and shift lead are made for this test, so other tests' accruals never count against them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from argon2 import PasswordHasher

from kiosk.api import KioskApi
from kiosk.config import KioskConfig
from kiosk.outbox import Outbox
from kiosk.session import CurrentGuest, KioskSession
from server.infra.db import connect_once
from server.seed.demo import DEMO_BRAND, PROGRAM
from shared import qr
from tests.conftest import LiveServer

PIN = "2580"
BARISTA_MAX = PROGRAM.accrual_limits["barista"].max_points
_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@dataclass
class Person:
    id: uuid.UUID
    email: str


class RecordingApi(KioskApi):
    """The real client, remembering which borrowed sessions it ended."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.ended: list[str] = []

    async def end_session(self, access_token: str) -> bool:
        self.ended.append(access_token)
        return await super().end_session(access_token)


async def staff_at(server: LiveServer, role: str, location_id: str) -> Person:
    """A staff member of the demo brand at one location, with a PIN."""
    email = f"zz-approval-{role}-{uuid.uuid4().hex[:8]}@test.regulars.test"
    conn = await connect_once(server.settings.database_url or "")
    try:
        staff_id = await conn.fetchval(
            "INSERT INTO staff_users (brand_id, email, display_name, role, location_ids,"
            " password_hash, pin_hash) SELECT id, $2, $3, $4, $5, $6, $7 FROM brands"
            " WHERE slug = $1 RETURNING id",
            DEMO_BRAND, email, f"Test {role}", role, [uuid.UUID(location_id)],
            _hasher.hash("unused password 123"), _hasher.hash(PIN),
        )  # fmt: skip
    finally:
        await conn.close()
    return Person(staff_id, email)


async def ledger_of(server: LiveServer, guest_id: str) -> tuple[list[Any], list[Any]]:
    """The guest's accrual transfers and the audit entries of their accruals."""
    conn = await connect_once(server.settings.database_url or "")
    try:
        transfers = await conn.fetch(
            "SELECT t.id, t.amount FROM transfers t JOIN accounts a ON a.id = t.credit_account_id"
            " WHERE a.guest_id = $1 AND t.code = 'accrual'",
            uuid.UUID(guest_id),
        )
        audits = await conn.fetch(
            "SELECT actor_id, device_id, detail FROM audit_log"
            " WHERE guest_id = $1 AND action = 'points.accrue'",
            uuid.UUID(guest_id),
        )
    finally:
        await conn.close()
    return transfers, audits


def test_a_shift_lead_approves_a_large_accrual_on_the_same_tablet(
    live_server: LiveServer, tmp_path: Path
) -> None:
    assert BARISTA_MAX is not None
    guest = live_server.new_guest()
    code = qr.generate(guest["public_id"], guest["qr_secret"])
    pairing_code = live_server.pairing_code("station")
    # 5 points per 1.00 at the base tier: 100 points over the barista's largest accrual.
    amount_minor = (BARISTA_MAX + 100) * 100 // PROGRAM.earn_per_100_minor
    points = BARISTA_MAX + 100

    async def scenario() -> dict[str, Any]:
        api = RecordingApi(live_server.base_url)
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        config = KioskConfig(data_dir=tmp_path, server_url=live_server.base_url)
        kiosk = KioskSession(api, outbox, config, save_config=lambda _c: None)
        try:
            assert (await kiosk.pair(pairing_code)).tone == "success"
            location_id = kiosk.config.location_id
            assert location_id is not None
            barista = await staff_at(live_server, "barista", location_id)
            lead = await staff_at(live_server, "shift_lead", location_id)
            signed_in = await kiosk.sign_in_pin(barista.email, PIN)
            assert signed_in.tone == "success", signed_in
            barista_tokens = api.tokens
            assert isinstance(await kiosk.scan(code), CurrentGuest)

            refused = await kiosk.accrue(amount_minor)
            assert refused.title == f"A shift lead or manager must approve {points} points"
            [waiting] = outbox.entries("needs_approval")
            assert waiting.approval is not None and waiting.approval.limit == "max_points"

            wrong = await kiosk.approve_with_pin(waiting.key, lead.email, "0000")
            assert wrong.title == "Wrong email or PIN", wrong
            not_lead = await kiosk.approve_with_pin(waiting.key, barista.email, PIN)
            assert not_lead.title == "A barista cannot approve this", not_lead
            assert outbox.get(waiting.key).state == "needs_approval"  # type: ignore[union-attr]

            approved = await kiosk.approve_with_pin(waiting.key, lead.email, PIN)
            assert approved.tone == "success", approved
            assert approved.title == f"+{points:,} points"
            # The barista is still the one signed in, and can go on working.
            assert api.tokens is barista_tokens and kiosk.signed_in
            assert await api.refresh_tokens()  # their session goes on
            assert isinstance(await kiosk.scan(code), CurrentGuest)
            shown = kiosk.current.view.points_available  # type: ignore[union-attr]
            return {
                "entry": outbox.get(waiting.key),
                "lead": lead,
                "device_id": kiosk.config.device_id,
                "ended": api.ended,
                "shown": shown,
            }
        finally:
            await kiosk.close()
            outbox.close()

    result = asyncio.run(scenario())
    entry = result["entry"]
    assert entry.state == "delivered" and entry.approved_by == result["lead"].email
    assert entry.transfer is not None and entry.transfer.points == points

    transfers, audits = asyncio.run(ledger_of(live_server, guest["id"]))
    assert [t["id"] for t in transfers] == [entry.transfer.id]  # exactly one accrual
    [audit] = audits
    detail = audit["detail"] if isinstance(audit["detail"], dict) else json.loads(audit["detail"])
    assert audit["actor_id"] == result["lead"].id and detail["role"] == "shift_lead"
    assert str(audit["device_id"]) == result["device_id"]

    wallet = httpx.get(
        f"{live_server.base_url}/v1/me/wallet",
        headers={"Authorization": f"Bearer {guest['token']}"},
        timeout=10,
    ).json()
    assert result["shown"] == wallet["points_available"]
    # Both borrowed sign-ins (the barista who may not approve, the shift lead) were ended.
    assert len(result["ended"]) == 2
    for token in result["ended"]:
        after = httpx.get(
            f"{live_server.base_url}/v1/locations/{kiosk_location(live_server)}/queue",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert after.status_code == 401, after.text


def kiosk_location(server: LiveServer) -> str:
    locations = httpx.get(server.base_url + "/v1/locations", timeout=10).json()
    return str(next(loc["id"] for loc in locations if "24/7" in loc["name"]))
