"""Smoke test of the Locust suite: a short headless run at a low rate against the live server.

It proves the suite still speaks the API (any failed request fails the test), the SLO gate
sets the exit code, and that every order the run placed has exactly one idempotency key.
Latency budgets are loose here (CI machines are noisy); the real budgets are for real runs.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from loadtests.common import Guest, SetupData, choose_location
from server.infra.db import connect_once

REPO = Path(__file__).resolve().parents[2]
RUN_S = 12


def _write_setup(live_server: Any, path: Path, guests: int = 4) -> SetupData:
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        location = choose_location(http.get("/v1/locations").json())
    made = [live_server.new_guest(points=20_000) for _ in range(guests)]
    data = SetupData(
        base_url=live_server.base_url,
        location_id=location["id"],
        guests=[
            Guest(
                id=g["id"],
                token=g["token"],
                phone=g["phone"],
                public_id=g["public_id"],
                qr_secret_hex=g["qr_secret"].hex(),
            )
            for g in made
        ],
        staff={
            "barista": live_server.staff_token("barista"),
            "manager": live_server.staff_token("manager"),
        },
        points_per_guest=20_000,
    )
    path.write_text(data.to_json())
    return data


def _orders_and_keys(database_url: str, guest_ids: list[str]) -> tuple[int, int, int]:
    async def query() -> tuple[int, int, int]:
        conn = await connect_once(database_url)
        try:
            orders = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE guest_id = ANY($1::uuid[])", guest_ids
            )
            keys = await conn.fetchval(
                "SELECT count(*) FROM idempotency_keys WHERE scope = ANY($1::text[])"
                " AND status_code = 201",
                [f"guest:{g}:orders" for g in guest_ids],
            )
            distinct = await conn.fetchval(
                "SELECT count(DISTINCT convert_from(response, 'UTF8')::jsonb->>'id')"
                " FROM idempotency_keys WHERE scope = ANY($1::text[]) AND status_code = 201",
                [f"guest:{g}:orders" for g in guest_ids],
            )
            return orders, keys, distinct
        finally:
            await conn.close()

    return asyncio.run(query())


def test_locust_suite_runs_clean(live_server: Any, tmp_path: Path) -> None:
    setup = _write_setup(live_server, tmp_path / "setup.json")
    env = {
        **os.environ,
        "REGULARS_LOADTEST_DATA": str(tmp_path / "setup.json"),
        "LOADTEST_WAIT_SCALE": "0.1",  # a few requests per second per user
        "LOADTEST_REPLAY_P": "0.2",  # exercise idempotent replays
        "SLO_CHECKOUT_P99_MS": "5000",
        "SLO_SCAN_P99_MS": "5000",
        "SLO_ERROR_RATE": "0",  # any failed request fails the run
        "SLO_MIN_CHECKOUTS": "3",
        "SLO_REPORT": str(tmp_path / "slo.json"),
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "loadtests" / "locustfile.py"),
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        f"{RUN_S}s",
        "--stop-timeout",
        "5",
        "--host",
        live_server.base_url,
        "--csv",
        str(tmp_path / "smoke"),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    output = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, output

    with open(tmp_path / "smoke_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0, output
    assert int(rows["POST /v1/orders"]["Request Count"]) >= 3, output
    verdict = json.loads((tmp_path / "slo.json").read_text())
    assert verdict["passed"], verdict

    # Exactly one order per idempotency key, retries and replays included.
    orders, keys, distinct = _orders_and_keys(
        live_server.settings.database_url, [g.id for g in setup.guests]
    )
    assert orders == keys == distinct, (orders, keys, distinct)


def test_slo_gate_fails_the_run(tmp_path: Path) -> None:
    """The post-processing gate exits non-zero when a budget is blown."""
    stats = tmp_path / "run_stats.csv"
    header = "Type,Name,Request Count,Failure Count,50%,95%,99%\n"
    stats.write_text(
        header
        + "POST,POST /v1/orders,1000,0,20,90,180\n"
        + "GET,GET /v1/me/wallet,1000,2,5,10,20\n"
        + ",Aggregated,2000,2,10,50,120\n"
    )
    from loadtests import slo

    assert slo.main([str(stats)]) == 1  # p99 180 > 150
    assert slo.main([str(stats), "--checkout-p99-ms", "200"]) == 0  # 0.1% errors is allowed
    assert slo.main([str(stats), "--checkout-p99-ms", "200", "--error-rate", "0.0005"]) == 1
