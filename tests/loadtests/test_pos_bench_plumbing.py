"""The POS benchmarks' plumbing (never their speed): the pgbench floor binds every parameter
of the intake's statements, a signed request line carries the real signature of its body, and
the import bench's file is one the import reads whole, as NDJSON and as CSV."""

from __future__ import annotations

import argparse
import random
import re
import uuid
from pathlib import Path

from loadtests.bench import Bench, pos_pgbench_scripts
from loadtests.common import Guest
from loadtests.import_bench import SUMMARY, receipts_file
from loadtests.pos_receipts import TillStream
from server.pos.importing import ImportedReceipt, parse_import
from shared.pos_signing import signature


def test_the_floor_scripts_bind_every_placeholder_of_the_intakes_sql() -> None:
    for script in pos_pgbench_scripts():
        assert not re.search(r"\$\d", script), script
    anonymous, named = pos_pgbench_scripts()
    # An anonymous sale is one statement, as the intake sends it; a guest's, two (a read whose
    # answer the write binds, and the write), no transaction.
    assert "BEGIN;" not in anonymous and anonymous.count(";\n") == 1
    assert "INSERT INTO receipts" in anonymous and "INSERT INTO receipt_keys" in anonymous
    assert "receipt_claims" in anonymous and "transfers" not in anonymous
    assert "BEGIN;" not in named and named.count(";\n") == 1 and named.count("\\gset\n") == 1
    assert "loyalty_tier_window(" in named and "guest_profiles" in named
    assert "pos_take_guest_sale(" in named and ":visits_total" in named
    # The lane does not read a key it knows; both check it is active, as the intake's do.
    for script in (anonymous, named):
        assert "revoked_at IS NULL" in script and "ak.key_id = :key::text" in script


def test_a_request_line_is_its_body_signed_with_the_real_scheme(tmp_path: Path) -> None:
    bench = Bench(argparse.Namespace(reports=str(tmp_path), suite="pos"))
    try:
        bench.pos_key = ("k1", "s3cret")
        bench.pos_stream = TillStream(str(uuid.uuid4()), [], random.Random(1), refund_p=0)
        lines = bench.pos_requests(50).read_bytes().splitlines()
    finally:
        bench.down()
    assert len(lines) == 50
    seen = set()
    for line in lines:
        header, body = line.split(b"\t", 1)
        stamp = int(header.decode().split(",")[0].removeprefix("t="))
        assert header.decode() == signature("s3cret", stamp, body)
        seen.add(header)
    assert len(seen) == 50  # a replayed body is signed afresh, never refused as a replay


def test_the_import_file_is_read_whole_in_either_format(tmp_path: Path) -> None:
    location = uuid.uuid4()
    guests = [Guest(id=str(uuid.uuid4()), token="", phone="+4915700000001")]
    for fmt in ("ndjson", "csv"):
        path = tmp_path / f"r.{fmt}"
        lines = receipts_file(path, 40, str(location), guests, seed=5, fmt=fmt)
        with path.open(encoding="utf-8", newline="") as file:
            parsed = list(
                parse_import(file, location_id=location, timezone="Europe/Berlin", currency="EUR")
            )
        assert all(isinstance(p, ImportedReceipt) for p in parsed), parsed[:3]
        assert len(parsed) == 40
        assert sum(len(p.receipt.lines) for p in parsed if isinstance(p, ImportedReceipt)) == lines
        assert any(p.receipt.guest for p in parsed if isinstance(p, ImportedReceipt))
    line = "imported=3 skipped=0 refused=1 receipts_per_s=812.5"
    assert SUMMARY.search(line) is not None
