"""The SLO gate: the run fails (exit code 1) when checkout p99, kiosk-scan p99, POS receipt
intake p99 or the error rate is over its threshold.

Percentiles come from the whole run's per-endpoint stats (``environment.stats.entries`` in
Locust, or the ``*_stats.csv`` it writes), never from the 10-second history. In distributed
mode only the master judges: its stats merge every worker's response-time histogram.

Thresholds: ``--slo-checkout-p99-ms`` (``SLO_CHECKOUT_P99_MS``, default 150),
``--slo-scan-p99-ms`` (``SLO_SCAN_P99_MS``, default 100), ``--slo-pos-p99-ms``
(``SLO_POS_P99_MS``, default 200; skipped when no till ran), ``--slo-error-rate``
(``SLO_ERROR_RATE``, a fraction, default 0.001 = 0.1%), ``--slo-min-checkouts``
(``SLO_MIN_CHECKOUTS``, default 1: a run that placed no order proves nothing).

Post-process a CSV from any run: ``python -m loadtests.slo loadtests/reports/run_stats.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Endpoint", "Thresholds", "Verdict", "judge", "rows_from_csv"]

log = logging.getLogger("loadtests.slo")

CHECKOUT = ("POST", "POST /v1/orders")
SCAN = ("POST", "POST /v1/kiosk/scan")
POS = ("POST", "POST /v1/pos/receipts")


@dataclass(frozen=True)
class Thresholds:
    checkout_p99_ms: float = 150.0
    scan_p99_ms: float = 100.0
    error_rate: float = 0.001
    min_checkouts: int = 1
    # Receipt intake does more than a checkout (guest resolution, earning, aggregates in one
    # transaction) and a till is not a person waiting: a looser budget.
    pos_p99_ms: float = 200.0

    @classmethod
    def from_env(cls) -> Thresholds:
        def get(name: str, default: float) -> float:
            raw = os.environ.get(name, "")
            return float(raw) if raw.strip() else default

        return cls(
            checkout_p99_ms=get("SLO_CHECKOUT_P99_MS", cls.checkout_p99_ms),
            scan_p99_ms=get("SLO_SCAN_P99_MS", cls.scan_p99_ms),
            error_rate=get("SLO_ERROR_RATE", cls.error_rate),
            min_checkouts=int(get("SLO_MIN_CHECKOUTS", cls.min_checkouts)),
            pos_p99_ms=get("SLO_POS_P99_MS", cls.pos_p99_ms),
        )


@dataclass(frozen=True)
class Endpoint:
    method: str
    name: str
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass
class Verdict:
    passed: bool
    lines: list[str]
    checkout: Endpoint | None
    scan: Endpoint | None
    requests: int
    failures: int
    pos: Endpoint | None = None

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "passed": self.passed,
                "lines": self.lines,
                "requests": self.requests,
                "failures": self.failures,
                "error_rate": self.error_rate,
                "checkout": asdict(self.checkout) if self.checkout else None,
                "scan": asdict(self.scan) if self.scan else None,
                "pos": asdict(self.pos) if self.pos else None,
            },
            indent=1,
        )


def judge(
    endpoints: list[Endpoint], total_requests: int, total_failures: int, t: Thresholds
) -> Verdict:
    """Compare the whole run's figures with the thresholds; every line says what and why."""
    by_key = {(e.method, e.name): e for e in endpoints}
    checkout, scan, pos = by_key.get(CHECKOUT), by_key.get(SCAN), by_key.get(POS)
    ok, lines = True, []

    def verdict(good: bool, text: str) -> None:
        nonlocal ok
        ok = ok and good
        lines.append(("PASS " if good else "FAIL ") + text)

    if checkout is None or checkout.requests < t.min_checkouts:
        verdict(
            False,
            f"checkout: {checkout.requests if checkout else 0} requests, "
            f"at least {t.min_checkouts} needed",
        )
    else:
        verdict(
            checkout.p99_ms <= t.checkout_p99_ms,
            f"checkout p99 {checkout.p99_ms:.0f} ms <= {t.checkout_p99_ms:.0f} ms "
            f"(p50 {checkout.p50_ms:.0f}, p95 {checkout.p95_ms:.0f}, n={checkout.requests})",
        )
    if scan is None or scan.requests == 0:
        lines.append("SKIP kiosk scan: no requests (endpoint absent or class disabled)")
    else:
        verdict(
            scan.p99_ms <= t.scan_p99_ms,
            f"kiosk scan p99 {scan.p99_ms:.0f} ms <= {t.scan_p99_ms:.0f} ms (n={scan.requests})",
        )
    if pos is None or pos.requests == 0:
        lines.append("SKIP POS receipt intake: no requests (endpoint absent or no till key)")
    else:
        verdict(
            pos.p99_ms <= t.pos_p99_ms,
            f"POS receipt intake p99 {pos.p99_ms:.0f} ms <= {t.pos_p99_ms:.0f} ms "
            f"(p50 {pos.p50_ms:.0f}, p95 {pos.p95_ms:.0f}, n={pos.requests})",
        )
    rate = total_failures / total_requests if total_requests else 0.0
    verdict(
        total_requests > 0 and rate <= t.error_rate,
        f"error rate {rate:.4%} <= {t.error_rate:.4%} ({total_failures} of {total_requests})",
    )
    return Verdict(ok, lines, checkout, scan, total_requests, total_failures, pos)


def rows_from_stats(stats: Any) -> tuple[list[Endpoint], int, int]:
    """Per-endpoint figures from a Locust ``RequestStats`` (the whole run)."""
    endpoints = [
        Endpoint(
            method=e.method,
            name=e.name,
            requests=e.num_requests,
            failures=e.num_failures,
            p50_ms=e.get_response_time_percentile(0.50) or 0.0,
            p95_ms=e.get_response_time_percentile(0.95) or 0.0,
            p99_ms=e.get_response_time_percentile(0.99) or 0.0,
        )
        for e in stats.entries.values()
    ]
    return endpoints, stats.total.num_requests, stats.total.num_failures


def rows_from_csv(path: str | os.PathLike[str]) -> tuple[list[Endpoint], int, int]:
    """The same figures from a ``--csv PREFIX`` run's ``PREFIX_stats.csv``."""
    endpoints: list[Endpoint] = []
    total = (0, 0)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):

            def num(col: str, row: dict[str, str] = row) -> float:
                value = row.get(col, "") or "0"
                return 0.0 if value == "N/A" else float(value)

            if row["Name"] == "Aggregated":
                total = (int(num("Request Count")), int(num("Failure Count")))
                continue
            endpoints.append(
                Endpoint(
                    method=row["Type"],
                    name=row["Name"],
                    requests=int(num("Request Count")),
                    failures=int(num("Failure Count")),
                    p50_ms=num("50%"),
                    p95_ms=num("95%"),
                    p99_ms=num("99%"),
                )
            )
    return endpoints, *total


def _report(verdict: Verdict, where: Path | None) -> None:
    print("\nSLO gate (whole run, per endpoint):", file=sys.stderr)
    for line in verdict.lines:
        print("  " + line, file=sys.stderr)
    print("  => " + ("PASSED" if verdict.passed else "FAILED"), file=sys.stderr)
    if where is not None:
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(verdict.to_json())


# -- Locust hooks (active when this module is imported by a locustfile) ------------------

# Only inside Locust: importing locust elsewhere would monkey-patch the process with gevent
# (fatal for an asyncio server running in a test process beside it).
if "locust" in sys.modules:
    from locust import events
    from locust.runners import WorkerRunner

    # Locust leaves EventHook.add_listener unannotated; it returns the function unchanged.
    @events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
    def _slo_arguments(parser: Any) -> None:
        group = parser.add_argument_group("SLO gate (loadtests/slo.py)")
        d = Thresholds()
        group.add_argument(
            "--slo-checkout-p99-ms",
            type=float,
            env_var="SLO_CHECKOUT_P99_MS",
            default=d.checkout_p99_ms,
            help="checkout p99 budget (ms)",
        )
        group.add_argument(
            "--slo-scan-p99-ms",
            type=float,
            env_var="SLO_SCAN_P99_MS",
            default=d.scan_p99_ms,
            help="kiosk scan p99 budget (ms)",
        )
        group.add_argument(
            "--slo-pos-p99-ms",
            type=float,
            env_var="SLO_POS_P99_MS",
            default=d.pos_p99_ms,
            help="POS receipt intake p99 budget (ms)",
        )
        group.add_argument(
            "--slo-error-rate",
            type=float,
            env_var="SLO_ERROR_RATE",
            default=d.error_rate,
            help="allowed failures / requests (0.001 = 0.1%%)",
        )
        group.add_argument(
            "--slo-min-checkouts",
            type=int,
            env_var="SLO_MIN_CHECKOUTS",
            default=d.min_checkouts,
            help="fewest checkouts for a verdict",
        )
        group.add_argument(
            "--slo-report", env_var="SLO_REPORT", default="", help="write the verdict as JSON here"
        )
        group.add_argument(
            "--slo-off",
            action="store_true",
            env_var="SLO_OFF",
            help="report only; never change the exit code",
        )

    @events.quitting.add_listener  # type: ignore[untyped-decorator]
    def _slo_gate(environment: Any, **_: Any) -> None:
        if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
            return
        o = environment.parsed_options
        thresholds = Thresholds(
            o.slo_checkout_p99_ms,
            o.slo_scan_p99_ms,
            o.slo_error_rate,
            o.slo_min_checkouts,
            o.slo_pos_p99_ms,
        )
        verdict = judge(*rows_from_stats(environment.stats), thresholds)
        _report(verdict, Path(o.slo_report) if o.slo_report else None)
        if not verdict.passed and not o.slo_off:
            environment.process_exit_code = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.slo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stats_csv", help="PREFIX_stats.csv written by locust --csv PREFIX")
    d = Thresholds.from_env()
    parser.add_argument("--checkout-p99-ms", type=float, default=d.checkout_p99_ms)
    parser.add_argument("--scan-p99-ms", type=float, default=d.scan_p99_ms)
    parser.add_argument("--error-rate", type=float, default=d.error_rate)
    parser.add_argument("--min-checkouts", type=int, default=d.min_checkouts)
    parser.add_argument("--pos-p99-ms", type=float, default=d.pos_p99_ms)
    args = parser.parse_args(argv)
    verdict = judge(
        *rows_from_csv(args.stats_csv),
        Thresholds(
            args.checkout_p99_ms,
            args.scan_p99_ms,
            args.error_rate,
            args.min_checkouts,
            args.pos_p99_ms,
        ),
    )
    _report(verdict, None)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
