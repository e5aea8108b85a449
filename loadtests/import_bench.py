"""Batch import benchmark: ``python -m loadtests.import_bench [--receipts 100000]``.

Starts its own stack (``regulars dev`` on a temp data dir), enrols guests, makes two POS
integrations at the demo location, writes a file of receipts with a fixed seed (1-4 lines from
a café till's catalogue, a third of them naming a guest by phone: loadtests/pos_receipts.py),
then:

I1  the real CLI, ``regulars import receipts FILE --location-id ID``, in its own process: its
    summary line ``imported=<n> skipped=<n> refused=<n> receipts_per_s=<x>``;
I0  the floor: a ``COPY`` of the very rows I1 wrote (receipts, receipt_lines, receipt_keys,
    receipt_claims), under the second integration and fresh receipt ids, into the same tables
    in one transaction; receipts per second of that;
RI  = I1 / I0.

``--rerun`` imports the file a second time and checks that it changes nothing (every receipt
``skipped``, no new row). Ledger transfers and guest aggregates are not part of the COPY floor:
they are rows of other tables the import writes for guest receipts only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.bench import HERE, CpuMeter, Proc, free_port, log, start, wait_healthy
from loadtests.common import Guest
from loadtests.pos_receipts import TillStream

SUMMARY = re.compile(
    r"imported=(\d+) skipped=(\d+) refused=(\d+) receipts_per_s=([\d.]+)", re.MULTILINE
)
# Tables the import writes per receipt, with the columns the floor's COPY takes, and how each
# row is re-keyed for the copy (so it lands beside the import's rows, not on them).
_NEW_ID = "md5(id::text || 'copy')::uuid"
_NEW_RECEIPT = "md5(receipt_id::text || 'copy')::uuid"
COPIED: dict[str, tuple[list[str], dict[str, str], str]] = {
    "receipts": (
        [
            "brand_id", "occurred_at", "id", "integration_id", "location_id", "external_id",
            "kind", "refund_of_id", "refund_of_at", "guest_id", "pos_customer_id", "currency",
            "gross_minor", "discount_minor", "earning_paid_minor", "points_tender",
            "points_earned", "points_reversed", "points_restored",
        ],
        {"id": _NEW_ID, "integration_id": "$COPY", "external_id": "external_id || '-copy'"},
        "integration_id = $IMPORT",
    ),
    "receipt_lines": (
        [
            "brand_id", "occurred_at", "receipt_id", "line_no", "sku", "name", "category",
            "quantity", "unit_price_minor", "gross_minor", "discount_minor", "tax_minor",
            "voided", "gift_card", "earns", "points_paid", "paid_minor", "points_earned",
        ],
        {"receipt_id": _NEW_RECEIPT},
        "receipt_id IN (SELECT id FROM receipts WHERE integration_id = $IMPORT)",
    ),
    "receipt_keys": (
        ["integration_id", "external_id", "request_hash", "brand_id", "occurred_at",
         "receipt_id", "response"],
        {"integration_id": "$COPY", "external_id": "external_id || '-copy'",
         "receipt_id": _NEW_RECEIPT},
        "integration_id = $IMPORT",
    ),
    "receipt_claims": (
        ["code", "brand_id", "occurred_at", "receipt_id", "expires_at"],
        {"code": "code || 'C'", "receipt_id": _NEW_RECEIPT},
        "receipt_id IN (SELECT id FROM receipts WHERE integration_id = $IMPORT)",
    ),
}  # fmt: skip


def receipts_file(
    path: Path,
    count: int,
    location_id: str,
    guests: list[Guest],
    seed: int,
    fmt: str,
    guest_share: float = 1 / 3,
) -> int:
    """Write ``count`` sales (fixed ``seed``) as NDJSON or CSV; returns the receipt lines."""
    rng = random.Random(seed)
    # Phones only: a QR would be judged at its scan time, long expired for past receipts.
    named = [Guest(id=g.id, token="", phone=g.phone) for g in guests]
    start_s = datetime(2026, 1, 5, 6, 0, tzinfo=UTC).timestamp()
    clock = iter(start_s + 17.0 * n for n in range(count + 1))
    stream = TillStream(
        location_id, named, rng, guest_share=guest_share, refund_p=0, late_p=0, replay_p=0,
        clock=lambda: next(clock),
    )  # fmt: skip
    lines = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == "csv":
            out.write("external_id,occurred_at,sku,name,category,quantity,unit_price_minor,"
                      "discount,tender,guest_phone\n")  # fmt: skip
        for _ in range(count):
            body = json.loads(stream.next().body)
            lines += len(body["lines"])
            if fmt == "ndjson":
                out.write(json.dumps(body, separators=(",", ":")) + "\n")
            else:
                for row in _csv_rows(body):
                    out.write(row + "\n")
    return lines


def _csv_rows(body: dict[str, Any]) -> Iterator[str]:
    phone = (body.get("guest") or {}).get("phone", "")
    tender = body["payments"][0]["tender"]
    for line in body["lines"]:
        discount = line.get("discount_minor", 0)
        yield ",".join(
            [
                body["external_id"], body["occurred_at"], line["sku"], line["name"],
                line["category"], str(line["quantity"]), str(line["unit_price_minor"]),
                f"{discount / 100:.2f}" if discount else "", tender, phone,
            ]
        )  # fmt: skip


def run_import(
    path: Path, location_id: str, data_dir: Path, profile: str | None = None
) -> dict[str, float]:
    """The real CLI in its own process; its summary line, parsed, plus wall-clock seconds.
    With ``profile``, under cProfile (its stats written there)."""
    cmd = [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else [])]
    cmd += ["-m", "server", "import", "receipts", str(path)]
    cmd += ["--location-id", location_id, "--data-dir", str(data_dir)]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    match = SUMMARY.search(out.stdout)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"import failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")
    imported, skipped, refused, per_s = match.groups()
    return {
        "imported": int(imported),
        "skipped": int(skipped),
        "refused": int(refused),
        "receipts_per_s": float(per_s),
        "wall_s": wall,
    }


async def copy_floor(dsn: str, import_id: str, copy_id: str) -> tuple[int, float]:
    """COPY the import's rows (re-keyed under ``copy_id``) into the same tables in one
    transaction; returns (receipts, seconds of the COPYs and the commit)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        dumps: dict[str, bytes] = {}
        for table, (columns, rekey, where) in COPIED.items():
            select = ", ".join(rekey.get(c, c) for c in columns).replace(
                "$COPY", f"'{copy_id}'::uuid"
            )
            query = (
                f"SELECT {select} FROM {table} WHERE {where.replace('$IMPORT', repr(import_id))}"
            )
            chunks: list[bytes] = []

            async def sink(data: bytes, chunks: list[bytes] = chunks) -> None:
                chunks.append(data)

            await conn.copy_from_query(query, output=sink, format="binary")
            dumps[table] = b"".join(chunks)
        receipts = int(
            await conn.fetchval(
                "SELECT count(*) FROM receipts WHERE integration_id = $1", import_id
            )
        )
        started = time.perf_counter()
        async with conn.transaction():
            for table, (columns, _, _) in COPIED.items():
                await conn.copy_to_table(
                    table, source=io.BytesIO(dumps[table]), columns=columns, format="binary"
                )
        return receipts, time.perf_counter() - started
    finally:
        await conn.close()


def create_integration(data_dir: Path, location_id: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "server", "integration", "create", "--location-id", location_id,
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return str(json.loads(out.stdout.strip().splitlines()[-1])["integration_id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.import_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--guests", type=int, default=200)
    parser.add_argument("--guest-share", type=float, default=1 / 3, help="receipts naming a guest")
    parser.add_argument("--rerun", action="store_true", help="import again: nothing may change")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the first import into FILE")
    parser.add_argument("--reports", default=str(HERE / "reports"))
    args = parser.parse_args(argv)
    from loadtests.setup_data import prepare

    logdir = Path(args.reports) / "import_bench"
    logdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="regulars-import-bench-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        dev: Proc = start(
            "dev",
            [sys.executable, "-m", "server", "dev", "--data-dir", tmp, "--port", str(port)],
            logdir,
        )
        try:
            wait_healthy(url, dev, 180)
            services = json.loads((data_dir / "services.json").read_text())
            setup = asyncio.run(
                prepare(base_url=url, guests=args.guests, points=1000, data_dir=tmp)
            )
            location = setup.location_id
            import_id = create_integration(data_dir, location)
            copy_id = create_integration(data_dir, location)
            path = data_dir / f"receipts.{args.format}"
            t0 = time.perf_counter()
            lines = receipts_file(
                path, args.receipts, location, setup.guests, args.seed, args.format,
                args.guest_share,
            )  # fmt: skip
            log(
                f"file: {args.receipts} receipts, {lines} lines, {path.stat().st_size / 2**20:.1f} MB"
                f" {args.format} (seed {args.seed}) in {time.perf_counter() - t0:.1f}s"
            )
            with CpuMeter(dev.popen.pid) as cpu:
                first = run_import(path, location, data_dir, args.profile)
            log(f"I1 import: {json.dumps(first)}")
            per_receipt = cpu.per_op_ms(args.receipts)
            log(
                "I1 CPU ms per receipt: "
                f"import process {per_receipt['generator']:.3f},"
                f" PostgreSQL {per_receipt['PostgreSQL']:.3f}, Redis {per_receipt['Redis']:.3f},"
                f" box busy {per_receipt['box busy %']:.0f} %"
            )
            problems = []
            if first["imported"] != args.receipts or first["refused"]:
                problems.append(f"expected {args.receipts} imported, none refused: {first}")
            if args.rerun:
                again = run_import(path, location, data_dir)
                log(f"I1 re-run: {json.dumps(again)}")
                if again["imported"] or again["refused"] or again["skipped"] != args.receipts:
                    problems.append(f"the re-run changed something: {again}")
            dsn = services["database_url"]
            receipts, seconds = asyncio.run(copy_floor(dsn, import_id, copy_id))
            floor = receipts / seconds
            log(f"I0 COPY floor: {receipts} receipts in {seconds:.2f}s = {floor:.0f} receipts/s")
            ratio = first["receipts_per_s"] / floor
            log(
                f"RI = I1/I0 = {first['receipts_per_s']:.0f} / {floor:.0f} = {ratio:.3f}"
                f" (import {first['receipts_per_s']:.0f} receipts/s)"
            )
        finally:
            dev.stop()
    if problems:
        log("CORRECTNESS FAILED: " + "; ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
