"""A lean open-loop HTTP/1.1 generator (wrk2's job; wrk2 is not packaged in Debian).

Requests are *scheduled* at a fixed rate whatever the server does, and latency is measured
from the scheduled time, so a slow server cannot slow the generator down and hide its queue
(no coordinated omission). Raw asyncio streams with keep-alive connections and hand-built
requests: one process sends a few thousand requests per second on one core, well above what
it is asked for here. It reports its own schedule lag and CPU use to show it was not the
bottleneck.

``python -m loadtests.openloop --url http://127.0.0.1:8100 --kind checkout --rate 100
--duration 10 --setup loadtests/reports/setup.json`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtests.common import load_setup, new_key, run_on_uvloop

__all__ = ["run"]


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reused = False  # True once a response came back on it

    async def exchange(self, raw: bytes) -> int:
        self.writer.write(raw)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        self.reused = True
        return status


def _requests(kind: str, host: str, setup_path: str | None, spread_slots: int) -> Any:
    """An endless generator of raw requests: checkouts (unique keys, rotating guests) or
    /healthz."""
    if kind == "healthz":
        raw = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        while True:
            yield raw, 200
    if kind == "scan":
        # Kiosk scans of the demo's regulars by card number (000000000001…000000000300) as the
        # demo barista; the server needs REGULARS_SCANS_PER_MINUTE raised for a benchmark.
        barista = json.loads(Path(setup_path or "").read_text())["staff"]["barista"]
        n = 0
        while True:
            n += 1
            body = json.dumps({"code": f"{n % 300 + 1:012d}"}).encode()
            yield (
                (
                    f"POST /v1/kiosk/scan HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {barista}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body,
                200,
            )
    setup = load_setup(setup_path)
    items = json.loads(Path(setup_path).read_text()).get("items") if setup_path else None
    item_ids = items or []
    rng = random.Random()
    base = (int(time.time()) // 300 + 3) * 300  # lead time 5 min: start 10-15 min ahead
    n = 0
    while True:
        guest = setup.guests[n % len(setup.guests)]
        n += 1
        pickup = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + 300 * rng.randrange(spread_slots))
        )
        body = json.dumps(
            {
                "location_id": setup.location_id,
                "lines": [{"item_id": i, "quantity": 1} for i in item_ids[:2]],
                "points_to_spend": rng.randint(20, 100),
                "pickup_at": pickup,
            },
            separators=(",", ":"),
        ).encode()
        head = (
            f"POST /v1/orders HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {guest.token}\r\n"
            f"Idempotency-Key: {new_key()}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        yield head + body, 201


async def run(
    url: str,
    kind: str,
    rate: float,
    duration: float,
    setup_path: str | None,
    max_conns: int = 256,
    spread_slots: int = 3744,
    timeline: bool = False,
) -> dict[str, Any]:
    """One open-loop run; ``timeline`` adds per-second p99 and max latency (by scheduled
    second), to tell a steady queue from stalls."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    source = _requests(kind, f"{host}:{port}", setup_path, spread_slots)
    idle: list[_Conn] = []
    opened = 0
    latencies: list[float] = []
    by_second: dict[int, list[float]] = {}
    lags: list[float] = []
    errors: dict[str, int] = {}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.2
    total = int(rate * duration)
    tasks: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(max_conns)

    async def one(scheduled: float, raw: bytes, expect: int) -> None:
        nonlocal opened
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    opened += 1
                    conn = _Conn(*await asyncio.open_connection(host, port))
                lags.append((time.perf_counter() - scheduled) * 1000)
                try:
                    status = await conn.exchange(raw)
                except (ConnectionError, asyncio.IncompleteReadError):
                    if not conn.reused:
                        raise
                    # The server closed this idle keep-alive connection (uvicorn does after
                    # 5 s); like any HTTP client, send again once on a new one.
                    conn.writer.close()
                    opened += 1
                    conn = _Conn(*await asyncio.open_connection(host, port))
                    status = await conn.exchange(raw)
                latency = (time.perf_counter() - scheduled) * 1000
                latencies.append(latency)
                by_second.setdefault(int(scheduled - start), []).append(latency)
                if status != expect:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                idle.append(conn)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                if conn is not None:
                    conn.writer.close()

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        raw, expect = next(source)
        task = asyncio.create_task(one(scheduled, raw, expect))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for conn in idle:
        conn.writer.close()
    latencies.sort()
    lags.sort()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result: dict[str, Any] = {
        "kind": kind,
        "rate": rate,
        "sent": total,
        "ok": len(latencies) - sum(errors.values()),
        "achieved_rps": len(latencies) / wall if wall else 0.0,
        "errors": errors,
        "p50_ms": _pct(latencies, 0.50),
        "p95_ms": _pct(latencies, 0.95),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else 0.0,
        "send_lag_p99_ms": _pct(lags, 0.99),
        "generator_cpu_pct": 100 * cpu / wall if wall else 0.0,
        "connections": opened,
    }
    if timeline:
        result["timeline"] = [
            {"second": sec, "n": len(ms), "p99_ms": _pct(sorted(ms), 0.99), "max_ms": max(ms)}
            for sec, ms in sorted(by_second.items())
        ]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.openloop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=["checkout", "healthz", "scan"], default="checkout")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--setup", help="setup file (checkout); may carry 'items'")
    parser.add_argument("--max-conns", type=int, default=256)
    parser.add_argument("--timeline", action="store_true", help="per-second p99 and max")
    args = parser.parse_args(argv)
    result = run_on_uvloop(
        run(
            args.url,
            args.kind,
            args.rate,
            args.duration,
            args.setup,
            args.max_conns,
            timeline=args.timeline,
        )
    )
    for row in result.pop("timeline", []):
        print(json.dumps(row))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
