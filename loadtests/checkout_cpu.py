"""The API's own CPU per checkout, measured in-process: no HTTP server, no load generator.

Drives the ASGI app directly (the same app `regulars serve` runs) with ``--concurrency``
checkouts in flight against a running `regulars dev` (or any PostgreSQL and Redis the settings
name) and prints the process's CPU time per checkout: what one worker pays for a checkout
besides HTTP parsing and socket writes. Throughput on a 2-core box moves ±20–40 % from run to
run; this figure moved ±5 % between back-to-back runs here, though it drifts with the box over
minutes (0.41–0.55 ms in one evening), so compare a lever by interleaving runs of both sides
(or ``--profile`` to see where the time goes). Levers smaller than ~5 % do not show.

    python -m loadtests.setup_data --guests 50 --points 1000000 --out /tmp/setup.json \
        --base-url http://127.0.0.1:8000
    python -m loadtests.checkout_cpu --setup /tmp/setup.json --count 5000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import pstats
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from typing import Any

from loadtests.common import load_setup, pickup_at, run_on_uvloop

Asgi = Any


async def _lifespan(app: Asgi) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, Any]]]:
    """Start the app's lifespan and wait until it is up; the queue shuts it down."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.get_running_loop().create_future()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set_result(None)
        elif message["type"] == "lifespan.startup.failed":
            started.set_exception(RuntimeError(message.get("message", "startup failed")))

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    )
    await started
    return task, inbox


async def _request(
    app: Asgi, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # a disconnect never comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


async def run(args: argparse.Namespace) -> int:
    from loadtests.setup_data import _settings
    from server.app import create_app

    setup = load_setup(args.setup)
    settings = _settings(args.data_dir)
    app = create_app(settings)
    task, inbox = await _lifespan(app)
    try:
        _, raw = await _request(app, "GET", "/v1/locations", {})
        locations = {loc["id"]: loc for loc in json.loads(raw)}
        location = locations[setup.location_id]
        rng = random.Random(7)
        guests = itertools.cycle(setup.guests)
        prefix = uuid.uuid4().hex[:8]
        counter = itertools.count()
        statuses: Counter[int] = Counter()

        async def checkout() -> None:
            n = next(counter)
            guest = next(guests)
            # the body the benchmark's wrk script sends: two items, 20-100 points, 48 h of slots
            body = {
                "location_id": location["id"],
                "lines": [{"item_id": item, "quantity": 1} for item in setup.items[:2]],
                "points_to_spend": rng.randint(20, 100),
                "pickup_at": pickup_at(location, 48, rng),
            }
            status, _ = await _request(
                app,
                "POST",
                "/v1/orders",
                {
                    "authorization": f"Bearer {guest.token}",
                    "idempotency-key": f"{prefix}-{n}",
                    "content-type": "application/json",
                },
                json.dumps(body).encode(),
            )
            statuses[status] += 1

        async def worker(count: int) -> None:
            for _ in range(count):
                await checkout()

        async def batch(count: int) -> None:
            per = count // args.concurrency
            await asyncio.gather(*(worker(per) for _ in range(args.concurrency)))

        await batch(min(args.count, 500))  # warm up: caches, prepared statements, scripts
        statuses.clear()
        samples = []
        profile = cProfile.Profile() if args.profile else None
        for _ in range(args.rounds):
            if profile:
                profile.enable()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await batch(args.count)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            if profile:
                profile.disable()
            done = args.count // args.concurrency * args.concurrency
            samples.append(cpu / done * 1000)
            print(
                f"  {done} checkouts: {cpu / done * 1000:.3f} ms CPU each, "
                f"{done / wall:.0f}/s wall ({args.concurrency} in flight)"
            )
        print(f"statuses: {dict(statuses)}")
        print(
            f"CPU per checkout: median {statistics.median(samples):.3f} ms "
            f"(min {min(samples):.3f}, max {max(samples):.3f}) over {args.rounds} rounds"
        )
        if profile:
            profile.dump_stats(args.profile)
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return 0 if set(statuses) == {201} else 1
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.checkout_cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--setup", default="loadtests/reports/setup.json")
    parser.add_argument("--data-dir", help="the `regulars dev` data directory (default .regulars)")
    parser.add_argument("--count", type=int, default=3000, help="checkouts per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", metavar="FILE", help="cProfile the rounds into FILE")
    return run_on_uvloop(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
