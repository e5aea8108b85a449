"""`regulars integration create`: one JSON line with a secret that a till can sign with at once."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.settings import Settings
from tests.api.pos_support import SignedTill, receipt_body
from tests.conftest import TEST_JWT_SECRET, Stack, app_client

REGULARS = [sys.executable, "-m", "server"]


def regulars(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "REGULARS_DATABASE_URL": stack.running.database_url,
        "REGULARS_REDIS_URL": stack.running.redis_url,
        "REGULARS_JWT_SECRET": TEST_JWT_SECRET,
    }
    return subprocess.run([*REGULARS, *args], env=env, capture_output=True, text=True, timeout=120)


def create_with_webhook(stack: Stack, location_id: uuid.UUID) -> dict[str, Any]:
    """``regulars integration create`` with a webhook URL: its one JSON line."""
    result = regulars(
        stack,
        "integration", "create", "--location-id", str(location_id),
        "--webhook-url", "https://till.example/hooks",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    printed: dict[str, Any] = json.loads(lines[0])
    return printed


async def test_integration_create_prints_a_key_a_till_can_sign_with(
    stack: Stack, settings: Settings
) -> None:
    async with app_client(settings, RecordingNotifier()) as client:
        services: Any = client.app.state.services
        station = await services.db.fetchval("SELECT id FROM locations WHERE slug = 'station'")
        printed = create_with_webhook(stack, station)
        assert set(printed) == {"integration_id", "key_id", "secret", "webhook_secret"}
        assert printed["webhook_secret"].startswith("whsec_")
        stored = await services.db.fetchrow(
            "SELECT secret_sealed, webhook_url, webhook_secret, webhook_secret_sealed"
            " FROM pos_keys k JOIN pos_integrations i ON i.id = k.integration_id"
            " WHERE k.key_id = $1",
            printed["key_id"],
        )
        assert stored["webhook_url"] == "https://till.example/hooks"
        assert printed["secret"].encode() not in bytes(stored["secret_sealed"])
        # Neither secret is stored in the clear (migration 0028 for the webhook's).
        sealed_webhook = bytes(stored["webhook_secret_sealed"])
        assert stored["webhook_secret"] is None
        assert printed["webhook_secret"].encode() not in sealed_webhook
        sealer = services.pos_integrations.sealer
        assert sealer.open(sealed_webhook) == printed["webhook_secret"]

        try:
            till = SignedTill(
                client, printed["integration_id"], printed["key_id"], printed["secret"], station
            )
            response = await till.receipt(receipt_body(till))
            assert response.status_code == 201, response.text
        finally:
            # Its webhook URL leads nowhere: retired, so no other test's deliveries go to it.
            await services.db.fetchval(
                "UPDATE pos_integrations SET disabled_at = now() WHERE id = $1 RETURNING id",
                uuid.UUID(printed["integration_id"]),
            )


def test_integration_create_for_an_unknown_location_is_a_one_line_error(stack: Stack) -> None:
    result = regulars(stack, "integration", "create", "--location-id", str(uuid.uuid4()))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("regulars: ") and "location" in result.stderr
    bad = regulars(stack, "integration", "create", "--location-id", "nope")
    assert bad.returncode == 2 and "--location-id" in bad.stderr


async def test_integration_webhook_replaces_the_secret_and_removes_the_webhook(
    stack: Stack, settings: Settings
) -> None:
    async with app_client(settings, RecordingNotifier()) as client:
        services: Any = client.app.state.services
        station = await services.db.fetchval("SELECT id FROM locations WHERE slug = 'station'")
        first = create_with_webhook(stack, station)
        integration = first["integration_id"]
        try:
            moved = regulars(
                stack, "integration", "webhook", "--integration-id", integration,
                "--url", "https://till.example/v2/hooks",
            )  # fmt: skip
            assert moved.returncode == 0, moved.stderr
            printed = json.loads(moved.stdout)
            assert printed["webhook_url"] == "https://till.example/v2/hooks"
            assert printed["webhook_secret"] not in (None, first["webhook_secret"])
            assert printed["previous_secret_valid_until"] is not None
            leaked = regulars(
                stack, "integration", "webhook", "--integration-id", integration,
                "--url", "https://till.example/v3/hooks", "--at-once",
            )  # fmt: skip
            assert leaked.returncode == 0, leaked.stderr
            assert json.loads(leaked.stdout)["previous_secret_valid_until"] is None
            removed = regulars(
                stack, "integration", "webhook", "--integration-id", integration, "--remove"
            )
            assert removed.returncode == 0, removed.stderr
            assert json.loads(removed.stdout)["webhook_url"] is None
            stored = await services.db.fetchrow(
                "SELECT webhook_url, webhook_secret_sealed, webhook_previous_sealed"
                " FROM pos_integrations WHERE id = $1",
                uuid.UUID(integration),
            )
            assert tuple(stored) == (None, None, None)
            for wrong in (["--url", "ftp://till"], ["--url", "https://x.example", "--remove"]):
                bad = regulars(
                    stack, "integration", "webhook", "--integration-id", integration, *wrong
                )
                assert bad.returncode == 2 and bad.stdout == ""
            unknown = regulars(
                stack, "integration", "webhook", "--integration-id", str(uuid.uuid4()), "--remove"
            )
            assert unknown.returncode == 2 and "integration" in unknown.stderr
        finally:
            await services.db.fetchval(
                "UPDATE pos_integrations SET disabled_at = now() WHERE id = $1 RETURNING id",
                uuid.UUID(integration),
            )
