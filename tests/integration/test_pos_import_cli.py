"""`regulars import receipts FILE`: CSV with the file's own column names, refused lines
reported by number, a summary line, and a second run that changes nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.pos.integrations import IntegrationIn
from server.settings import Settings
from tests.conftest import Stack, app_client
from tests.integration.test_pos_cli import regulars

CSV = """TransactionNo,date,time,Item,quantity,unit_price,tender
{a},2026-11-02,08:15,Cappuccino,2,3.80,card
{a},2026-11-02,08:15,Croissant,1,2.40,card
{b},2026-11-02,09:40,Flat White,1,4.00,cash
{c},2026-11-02,10:05,Tea,lots,3.00,cash
"""


async def test_a_csv_imports_once_and_reports_refused_lines(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    async with app_client(settings, RecordingNotifier()) as client:
        services: Any = client.app.state.services
        station = await services.db.fetchval("SELECT id FROM locations WHERE slug = 'station'")
        created = await services.pos_integrations.create(IntegrationIn(location_id=station))
        ids = {k: f"IMP-{uuid.uuid4().hex[:8]}" for k in "abc"}
        path = tmp_path / "till-export.csv"
        path.write_text(CSV.format(**ids))
        args = [
            "import", "receipts", str(path), "--location-id", str(station),
            "--integration", str(created.integration_id),
            "--map", "external_id=TransactionNo,name=Item",
        ]  # fmt: skip
        first = regulars(stack, *args)
        assert first.returncode == 0, first.stderr
        lines = first.stdout.strip().splitlines()
        assert lines[-1].startswith("imported=2 skipped=0 refused=1 receipts_per_s=")
        assert lines[0].startswith("line 5: refused:") and "quantity" in lines[0]
        stored = await services.db.fetch(
            "SELECT external_id, gross_minor, occurred_at FROM receipts"
            " WHERE integration_id = $1 ORDER BY external_id",
            created.integration_id,
        )
        assert [(r["external_id"], r["gross_minor"]) for r in stored] == sorted(
            [(ids["a"], 2 * 380 + 240), (ids["b"], 400)]
        )
        # 08:15 at the station (Europe/Berlin, CET in November) is 07:15 UTC.
        assert {r["occurred_at"].hour for r in stored} == {7, 8}

        again = regulars(stack, *args)
        assert again.returncode == 0, again.stderr
        assert (
            again.stdout.strip()
            .splitlines()[-1]
            .startswith("imported=0 skipped=2 refused=1 receipts_per_s=")
        )


async def test_an_ndjson_file_imports_at_the_locations_integration(
    stack: Stack, settings: Settings, tmp_path: Path
) -> None:
    async with app_client(settings, RecordingNotifier()) as client:
        services: Any = client.app.state.services
        mitte = await services.db.fetchval("SELECT id FROM locations WHERE slug = 'mitte'")
        await services.pos_integrations.create(IntegrationIn(location_id=mitte))
        receipt = {
            "external_id": f"N-{uuid.uuid4().hex[:8]}",
            "location_id": str(mitte),
            "occurred_at": "2026-11-02T08:00:00+00:00",
            "lines": [{"name": "Espresso", "unit_price_minor": 240}],
        }
        path = tmp_path / "receipts.ndjson"
        path.write_text(json.dumps(receipt) + "\n\n")
        result = regulars(stack, "import", "receipts", str(path), "--location-id", str(mitte))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("imported=1 skipped=0 refused=0")
        unknown = regulars(
            stack, "import", "receipts", str(path), "--location-id", str(uuid.uuid4())
        )
        assert unknown.returncode == 2 and "integration" in unknown.stderr
