"""The `regulars` command as a user runs it: dev start and stop, SIGKILL and restart, errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from server.infra.db import connect_once
from server.infra.embedded import free_port
from server.infra.migrate import apply_migrations
from tests.conftest import Stack

REGULARS = [sys.executable, "-m", "server"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGULARS_")}
    return {**env, **extra}


class Dev:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.fresh = False

    def start(self) -> None:
        # The smallest WAL reserve (two segments): the path runs, without writing 1 GB.
        options = ["--wal-reserve-mb", "32", *(["--fresh"] if self.fresh else [])]
        where = ["--data-dir", str(self.data_dir), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*REGULARS, "dev", *where, *options],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read() if self.proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("regulars dev did not become ready")

    def children(self) -> list[int]:
        state = json.loads((self.data_dir / "services.json").read_text())
        assert state["owner_pid"] == self.proc.pid  # type: ignore[union-attr]
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]  # type: ignore[union-attr]

    def output(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.read()


def gone(pids: list[int], timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in pids
        ):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    os.chmod(tmp_path, 0o755)
    handle = Dev(tmp_path / "data")
    yield handle
    if handle.proc is not None and handle.proc.poll() is None:
        handle.proc.kill()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_dev_serves_and_stops_everything(dev: Dev, stop_signal: int) -> None:
    dev.start()
    base = f"http://127.0.0.1:{dev.port}"
    assert httpx.get(base + "/readyz").json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
    assert len(httpx.get(base + "/v1/locations").json()) >= 3
    metrics = httpx.get(base + "/metrics").text
    assert (
        'regulars_request_duration_seconds_bucket{app_name="regulars",le="0.005",method="GET",path="/v1/locations"'
        in metrics
    )
    assert len(httpx.get(base + "/healthz").headers["x-request-id"]) == 32
    token = subprocess.run(
        [*REGULARS, "token", "guest", "--phone", "+4915100000001", "--data-dir", str(dev.data_dir)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert token.returncode == 0, token.stderr
    assert token.stdout.count("\n") == 1 and token.stdout.count(".") == 2
    me = httpx.get(base + "/v1/me", headers={"Authorization": f"Bearer {token.stdout.strip()}"})
    assert me.status_code == 200 and me.json()["first_name"] == "Demo"
    children = dev.children()
    assert children
    assert dev.proc is not None
    dev.proc.send_signal(stop_signal)
    assert dev.proc.wait(60) == 0
    assert gone(children)
    assert not (dev.data_dir / "services.json").exists()


def test_sigkill_then_restart_reuses_the_data(dev: Dev) -> None:
    dev.start()
    first = _read_until_banner(dev)
    assert "(demo brand loaded)" in first and "reserving 32 MB of WAL" in first
    children = dev.children()
    assert dev.proc is not None
    dev.proc.kill()
    dev.proc.wait()
    assert gone(children), "children outlived a SIGKILLed regulars dev"
    dev.start()
    banner = _read_until_banner(dev)
    assert "Regulars is running" in banner and "(demo brand loaded)" not in banner
    assert "reserving" not in banner  # the WAL reserve is made once per data directory
    # Commands beside it find it through REGULARS_DATA_DIR too.
    staff = subprocess.run(
        [*REGULARS, "token", "staff", "--email", "barista@demo.regulars.test"],
        env=clean_env(REGULARS_DATA_DIR=str(dev.data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert staff.returncode == 0 and staff.stdout.count(".") == 2, staff.stderr
    dev.proc.send_signal(signal.SIGINT)
    assert dev.proc.wait(60) == 0
    (dev.data_dir / "marker").write_text("old data")
    dev.fresh = True
    dev.start()
    assert "(demo brand loaded)" in _read_until_banner(dev)
    assert not (dev.data_dir / "marker").exists()
    dev.proc.send_signal(signal.SIGTERM)
    assert dev.proc.wait(60) == 0


def _read_until_banner(dev: Dev) -> str:
    assert dev.proc is not None and dev.proc.stdout is not None
    lines = []
    for line in dev.proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C stops everything"):
            break
    return "".join(lines)


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*REGULARS, "dev", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert f"port {port}" in result.stderr and "--port" in result.stderr


def test_data_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    owned = tmp_path / "someone-elses"
    owned.mkdir()
    os.chmod(tmp_path, 0o755)
    if os.geteuid() == 0:
        # As root, run the command as an unprivileged user against root's folder.
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *REGULARS]
    else:
        os.chown(owned, os.getuid(), os.getgid())
        owned.chmod(0o500)
        command = REGULARS
    result = subprocess.run(
        [*command, "dev", "--data-dir", str(owned), "--port", str(free_port())],
        env=clean_env(HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    said = result.stderr
    assert any(why in said for why in ("another user", "not writable", "permission denied")), said
    assert result.stderr.strip().count("\n") == 0


def test_database_that_does_not_answer(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/regulars"
    result = subprocess.run(
        [*REGULARS, "migrate"],
        env=clean_env(REGULARS_DATABASE_URL=url, REGULARS_REDIS_URL="redis://127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "does not answer" in result.stderr and "REGULARS_DATABASE_URL" in result.stderr


def test_bad_setting_names_the_variable() -> None:
    result = subprocess.run(
        [*REGULARS, "migrate"],
        env=clean_env(REGULARS_DB_POOL_MAX="many"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "REGULARS_DB_POOL_MAX" in result.stderr


def test_commands_without_a_running_dev_say_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *REGULARS,
            "token",
            "staff",
            "--email",
            "manager@demo.regulars.test",
            "--data-dir",
            str(tmp_path),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "regulars dev" in result.stderr


def test_concurrent_migrations_apply_each_file_once(stack: Stack) -> None:
    admin_url = stack.running.database_url.rsplit("/", 1)[0] + "/postgres"
    name = f"migrations_{os.getpid()}_{int(time.time())}"

    async def run() -> list[Any]:
        admin = await connect_once(admin_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = stack.running.database_url.rsplit("/", 1)[0] + f"/{name}"
        conns = [await connect_once(url) for _ in range(4)]
        try:
            results = await asyncio.gather(*(apply_migrations(c) for c in conns))
            rows = await conns[0].fetch("SELECT name FROM schema_migrations")
        finally:
            for c in conns:
                await c.close()
            await admin.execute(f'DROP DATABASE "{name}"')
            await admin.close()
        return [results, rows]

    results, rows = asyncio.run(run())
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(r["name"] for r in rows)
    assert len(applied) == len(set(applied)) >= 1


def test_embedded_postgres_commits_durably_and_checkpoints_by_the_timer(stack: Stack) -> None:
    """Every figure in docs/PERFORMANCE.md assumes these; a launcher change would void them."""

    async def settings() -> list[str]:
        conn = await connect_once(stack.running.database_url)
        try:
            return [
                await conn.fetchval(f"SHOW {name}")
                for name in ("synchronous_commit", "fsync", "max_wal_size")
            ]
        finally:
            await conn.close()

    assert asyncio.run(settings()) == ["on", "on", "4GB"]


def test_the_tables_every_checkout_writes_are_analysed_from_small_samples(stack: Stack) -> None:
    """Autovacuum's ANALYZE of these five at PostgreSQL's default target stalled checkouts
    (migration 0008); a column added to one of them later needs the same small target."""

    async def targets() -> list[Any]:
        conn = await connect_once(stack.running.database_url)
        try:
            return await conn.fetch(
                "SELECT c.relname, a.attname, a.attstattarget FROM pg_attribute a"
                " JOIN pg_class c ON c.oid = a.attrelid"
                " WHERE c.relname = ANY($1::text[]) AND c.relkind = 'r'"
                " AND a.attnum > 0 AND NOT a.attisdropped",
                ["orders", "order_lines", "transfers", "idempotency_keys", "open_holds"],
            )
        finally:
            await conn.close()

    rows = asyncio.run(targets())
    assert len({row["relname"] for row in rows}) == 5
    assert [
        f"{row['relname']}.{row['attname']}" for row in rows if row["attstattarget"] != 10
    ] == []


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_serve_finishes_in_flight_requests_on_sigterm(stack: Stack, server: str) -> None:
    env = clean_env(
        REGULARS_DATABASE_URL=stack.running.database_url,
        REGULARS_REDIS_URL=stack.running.redis_url,
        REGULARS_JWT_SECRET="serve-test-secret-0123456789-0123456789",
    )
    port = free_port()
    token = subprocess.run(
        [*REGULARS, "token", "guest", "--phone", f"+49157{port:08d}", "--create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    proc = subprocess.Popen(
        [
            *REGULARS,
            "serve",
            "--workers",
            "1",
            "--server",
            server,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}"}
        guest_id = httpx.get(base + "/v1/me", headers=headers).json()["id"]
        station = next(
            loc for loc in httpx.get(base + "/v1/locations").json() if "24/7" in loc["name"]
        )
        item = httpx.get(f"{base}/v1/locations/{station['id']}/menu").json()["categories"][0][
            "items"
        ][0]
        body = {
            "location_id": station["id"],
            "lines": [{"item_id": item["id"], "quantity": 1}],
            "points_to_spend": 10,
        }

        async def in_flight() -> int:
            # Hold the guest's account row so the checkout is mid-transaction when SIGTERM comes.
            blocker = await connect_once(stack.running.database_url)
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(
                "SELECT 1 FROM accounts WHERE guest_id = $1 FOR UPDATE", uuid.UUID(guest_id)
            )
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                request = asyncio.create_task(
                    http.post(
                        "/v1/orders",
                        json=body,
                        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
                    )
                )
                await asyncio.sleep(1.0)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(1.0)
                await transaction.rollback()
                await blocker.close()
                response = await request
            return response.status_code

        assert asyncio.run(in_flight()) == 201
        # uvicorn re-raises the signal it drained on, so its exit status says "SIGTERM".
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
