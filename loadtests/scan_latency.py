"""Median latency of N sequential kiosk scans against a running `regulars dev`.

    REGULARS_SCANS_PER_MINUTE=100000 regulars dev      # a barista may scan 120 a minute
    python -m loadtests.scan_latency --base-url http://127.0.0.1:8000 --count 1000

Scans seeded demo guests by loyalty card number (the same lookup path as a QR code minus the
MAC check) as the demo barista, one request at a time on one keep-alive connection, and
prints p50/p95/p99 of the whole request as the client sees it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import httpx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    extra = ["--data-dir", args.data_dir] if args.data_dir else []
    token = subprocess.run(
        [sys.executable, "-m", "server", "token", "staff", "--email", "barista@demo.regulars.test", *extra],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    latencies_ms = []
    with httpx.Client(base_url=args.base_url, timeout=10, headers=headers) as http:
        for n in range(args.count + 50):
            card = f"{n % 300 + 1:012d}"  # the demo's 300 guests have cards 000000000001…
            started = time.perf_counter()
            response = http.post("/v1/kiosk/scan", json={"code": card})
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code == 429:
                print(
                    "the per-staff scan limit stopped the run: start the server with "
                    "REGULARS_SCANS_PER_MINUTE=100000 for a benchmark",
                    file=sys.stderr,
                )
                return 1
            if response.status_code != 200:
                print(f"scan failed: {response.status_code} {response.text}", file=sys.stderr)
                return 1
            if n >= 50:  # warm-up: connections, prepared statements, caches
                latencies_ms.append(elapsed)
    # inclusive: the default (exclusive) extrapolates past the slowest sample on short runs
    quantiles = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    print(f"{len(latencies_ms)} sequential scans by card number")
    print(
        f"median {statistics.median(latencies_ms):.2f} ms  p95 {quantiles[94]:.2f} ms  "
        f"p99 {quantiles[98]:.2f} ms  max {max(latencies_ms):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
