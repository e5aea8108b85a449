"""Median latency of N sequential checkouts against a running `regulars dev`.

    python -m loadtests.checkout_latency --base-url http://127.0.0.1:8000 --count 1000

One guest (created with the CLI), one keep-alive connection, one order at a time, each with
points and a fresh Idempotency-Key; prints p50/p95/p99 and the server-side count check.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import httpx


def cli(*args: str, data_dir: str | None) -> str:
    extra = ["--data-dir", data_dir] if data_dir else []
    result = subprocess.run(
        [sys.executable, "-m", "server", *args, *extra], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--points", type=int, default=10)
    args = parser.parse_args()

    phone = f"+491519{int(time.time()) % 10_000_000:07d}"
    guest = cli("token", "guest", "--phone", phone, "--create", data_dir=args.data_dir)
    manager = cli("token", "staff", "--email", "manager@demo.regulars.test", data_dir=args.data_dir)
    with httpx.Client(base_url=args.base_url, timeout=10) as http:
        me = http.get("/v1/me", headers={"Authorization": f"Bearer {guest}"}).json()
        http.post(
            f"/v1/guests/{me['id']}/adjustments",
            json={"points": args.count * args.points, "reason": "latency run"},
            headers={"Authorization": f"Bearer {manager}", "Idempotency-Key": str(uuid.uuid4())},
        ).raise_for_status()
        station = next(loc for loc in http.get("/v1/locations").json() if "24/7" in loc["name"])
        menu = http.get(f"/v1/locations/{station['id']}/menu").json()
        item = next(i for c in menu["categories"] for i in c["items"] if i["sku"] == "AVO")
        body = {
            "location_id": station["id"],
            "lines": [{"item_id": item["id"], "quantity": 1}],
            "points_to_spend": args.points,
        }
        headers = {"Authorization": f"Bearer {guest}"}
        for _ in range(20):  # warm-up: menu cache, prepared statements, connections
            warm = {**body, "points_to_spend": 0}
            http.post(
                "/v1/orders", json=warm, headers={**headers, "Idempotency-Key": str(uuid.uuid4())}
            )
        latencies_ms = []
        # The 24/7 counter takes 500 orders per 5-minute slot: spread the run over slots, from
        # a random start within the next ten days so repeated runs do not fill the same ones.
        first_slot = (int(time.time()) // 300 + 12 + random.randrange(2900)) * 300
        for n in range(args.count):
            key = {"Idempotency-Key": str(uuid.uuid4())}
            pickup = datetime.fromtimestamp(first_slot + (n // 400) * 300, UTC).isoformat()
            started = time.perf_counter()
            response = http.post(
                "/v1/orders", json={**body, "pickup_at": pickup}, headers={**headers, **key}
            )
            latencies_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code != 201:
                print(f"checkout failed: {response.status_code} {response.text}", file=sys.stderr)
                return 1
        wallet = http.get("/v1/me/wallet", headers=headers).json()
    # inclusive: the default (exclusive) extrapolates past the slowest sample on short runs
    quantiles = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    print(f"{args.count} sequential checkouts with {args.points} points each")
    print(
        f"median {statistics.median(latencies_ms):.2f} ms  p95 {quantiles[94]:.2f} ms  "
        f"p99 {quantiles[98]:.2f} ms  max {max(latencies_ms):.2f} ms"
    )
    print(
        f"points on hold afterwards: {wallet['points_pending']} (expected {args.count * args.points})"
    )
    return 0 if wallet["points_pending"] == args.count * args.points else 1


if __name__ == "__main__":
    sys.exit(main())
