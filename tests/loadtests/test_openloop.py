"""The open-loop generator the benchmark and the spike rely on: it sends what it was asked,
counts statuses and errors honestly, and re-sends once when the server closes a keep-alive
connection under it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from loadtests.common import run_on_uvloop
from loadtests.openloop import run
from tests.loadtests.test_locust_smoke import _write_setup


def test_checkouts_at_a_fixed_rate_all_arrive(live_server: Any, tmp_path: Path) -> None:
    setup_path = tmp_path / "setup.json"
    setup = _write_setup(live_server, setup_path, guests=2)
    with httpx.Client(base_url=live_server.base_url, timeout=10) as http:
        menu = http.get(f"/v1/locations/{setup.location_id}/menu").json()
    raw = json.loads(setup_path.read_text())
    raw["items"] = [i["id"] for c in menu["categories"] for i in c["items"] if i["available"]][:2]
    setup_path.write_text(json.dumps(raw))

    result = run_on_uvloop(run(live_server.base_url, "checkout", 40, 1.0, str(setup_path)))
    assert result["errors"] == {}
    assert result["sent"] == result["ok"] == 40
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


async def test_wrong_statuses_and_dropped_connections_are_errors(live_server: Any) -> None:
    result = await run(live_server.base_url, "healthz", 50, 0.4, None)
    assert result["errors"] == {} and result["ok"] == 20

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    for handler, errors in ((busy, {"503": 10}), (hang_up, {"ConnectionError": 10})):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            result = await run(f"http://127.0.0.1:{port}", "healthz", 50, 0.2, None)
        assert result["ok"] == 0 and result["errors"] == errors


async def test_a_keep_alive_connection_closed_by_the_server_is_retried_once() -> None:
    """The server answers the first request on each connection and drops the connection on
    the second, as a server closing idle keep-alive connections does when a request races
    the close."""

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await run(f"http://127.0.0.1:{port}", "healthz", 40, 0.5, None, max_conns=1)
    assert result["errors"] == {}
    assert result["ok"] == result["sent"] == 20
    assert result["connections"] == 20  # each request after the first: dropped, then re-sent
