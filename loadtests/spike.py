"""The 3x spike at a fixed open-loop rate: baseline, 60 s at three times it, then baseline again.

    python -m loadtests.spike --url http://127.0.0.1:8012 --setup SETUP.json --baseline 100

Prints one line per phase (rate, p50/p95/p99, errors) and exits non-zero if the spike had a 5xx,
its p99 passed --spike-p99-ms, or the first 10 s after it were not back under
--recovered-p99-ms. Uses the open-loop generator (loadtests/openloop.py), so a slow server
shows up as latency, not as a lower request rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from loadtests.openloop import run


def _line(name: str, result: dict[str, Any]) -> str:
    return (
        f"{name:<22} {result['rate']:>5.0f}/s  achieved {result['achieved_rps']:>6.1f}/s  "
        f"p50 {result['p50_ms']:>7.1f}  p95 {result['p95_ms']:>7.1f}  p99 {result['p99_ms']:>7.1f} ms  "
        f"errors {result['errors'] or 0}"
    )


async def spike(url: str, setup: str, baseline: float, spike_s: float) -> dict[str, dict[str, Any]]:
    phases = [
        ("baseline", baseline, 20.0),
        ("spike x3", 3 * baseline, spike_s),
        ("after: first 10 s", baseline, 10.0),
        ("after: next 20 s", baseline, 20.0),
    ]
    return {
        name: await run(url, "checkout", rate, seconds, setup) for name, rate, seconds in phases
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--setup", required=True, help="from python -m loadtests.setup_data (with 'items')"
    )
    parser.add_argument("--baseline", type=float, default=100.0, help="checkouts per second")
    parser.add_argument("--spike-s", type=float, default=60.0)
    parser.add_argument("--spike-p99-ms", type=float, default=250.0)
    parser.add_argument("--recovered-p99-ms", type=float, default=50.0)
    args = parser.parse_args()
    results = asyncio.run(spike(args.url, args.setup, args.baseline, args.spike_s))
    for name, result in results.items():
        print(_line(name, result))
    during, after = results["spike x3"], results["after: first 10 s"]
    server_errors = sum(n for code, n in during["errors"].items() if code.startswith("5"))
    verdicts = {
        "no 5xx during the spike": server_errors == 0,
        f"spike p99 <= {args.spike_p99_ms:.0f} ms": during["p99_ms"] <= args.spike_p99_ms,
        f"back under {args.recovered_p99_ms:.0f} ms p99 within 10 s": after["p99_ms"]
        <= args.recovered_p99_ms,
    }
    for verdict, ok in verdicts.items():
        print(f"{'PASS' if ok else 'FAIL'}  {verdict}")
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
