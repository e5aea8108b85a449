"""The bench's R1 pairs each round's F5 with the F1 measured beside it, in that round, and its
``pg.NAME=VALUE`` option refuses what it could not change."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from loadtests.bench import Bench, Server
from tests.conftest import Stack


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    """A Bench with no stack; the temp dir it makes goes when the test ends."""
    made = Bench(argparse.Namespace(reports=str(tmp_path), suite="checkout"))
    yield made
    made.down()


def test_r1_pairs_each_rounds_f5_with_the_f1_of_the_same_round(bench: Bench) -> None:
    bench.servers = [Server("uvicorn:1")]
    # The box slows down between the rounds: F1 halves, and so does F5.
    f1_tps = {0: 2000.0, 1: 1000.0}
    f5_rps = {0: 1000.0, 1: 500.0}
    order: list[tuple[str, int]] = []
    now = {"round": 0}

    def pgbench(clients: int) -> tuple[float, dict[str, float]]:
        order.append(("F1", now["round"]))
        return f1_tps[now["round"]] + clients, {"PostgreSQL": 1.0}

    def http_round(n: int, server: Server) -> float:
        order.append(("F5", n))
        return f5_rps[n]

    def pos_round(n: int, server: Server) -> None:
        order.append(("POS", n))

    fakes: Any = bench
    fakes.pgbench, fakes.http_round, fakes.pos_round = pgbench, http_round, pos_round
    for n in (0, 1):
        now["round"] = n
        bench.round(n)

    # Rounds alternate which comes first, so each F5 sits right beside its round's F1 (the
    # POS round, with its own floor inside, comes after both) ...
    assert order == [
        ("F1", 0), ("F1", 0), ("F5", 0), ("POS", 0), ("F5", 1), ("F1", 1), ("F1", 1), ("POS", 1),
    ]  # fmt: skip
    # ... and R1 divides by that one, the best of its 8 and 16 clients (not round 0's F1).
    assert bench.results["R1 = F5/F1 [uvicorn:1]"] == [1000.0 / 2016.0, 500.0 / 1016.0]


def test_a_setting_the_stack_passes_on_the_command_line_is_refused(
    stack: Stack, bench: Bench
) -> None:
    bench.services = {"pg_port": urlsplit(stack.running.database_url).port}
    assert "regulars" in urlsplit(stack.running.database_url).path  # the database psql uses
    # max_wal_size comes from postgres's command line, which ALTER SYSTEM cannot outrank.
    with pytest.raises(ValueError, match="command line"):
        bench._pg_settings({"max_wal_size": "1GB"})
    before = bench.psql("SHOW checkpoint_completion_target")
    bench._pg_settings({"checkpoint_completion_target": "0.5"})
    try:
        assert bench.psql("SHOW checkpoint_completion_target") == "0.5"
    finally:
        bench._pg_settings({"checkpoint_completion_target": None})
    assert bench.psql("SHOW checkpoint_completion_target") == before
