"""The bench's CPU meter puts each process's CPU on the right part of the stack."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from loadtests.bench import CpuMeter, _proc_table

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def _cpu_s(pid: int) -> float:
    return _proc_table()[pid][2]


def test_the_server_and_the_generator_are_told_apart() -> None:
    # The "server": a live process that burns 0.3 s of CPU, then idles until killed.
    server = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.3) + "time.sleep(60)"])
    try:
        with CpuMeter(stack_root=server.pid, server_root=server.pid) as meter:
            # The "generator": a child of this process that burns 0.2 s and exits.
            subprocess.run([sys.executable, "-c", BURN.format(s=0.2)], check=True)
            while _cpu_s(server.pid) < 0.3:
                time.sleep(0.05)
        per_op = meter.per_op_ms(ops=1)
    finally:
        server.kill()
        server.wait()
    assert per_op["API"] >= 250
    assert per_op["generator"] >= 150
    assert per_op["PostgreSQL"] == 0 and per_op["Redis"] == 0
    assert 0 < per_op["box busy %"] <= 100


def test_without_a_server_there_is_no_api_part() -> None:
    with CpuMeter(stack_root=1) as meter:
        pass
    assert "API" not in meter.per_op_ms(ops=1)
