"""The bench's CPU meter puts each process's CPU on the right part of the stack, and its
``cpus=`` option moves processes between CPUs and back."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from loadtests.bench import Bench, CpuMeter, Server, _affinity, _policy, _proc_table

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


def test_server_options_come_from_the_spec() -> None:
    assert Server("uvicorn:1:pool=20:cpus=1").options == {"pool": "20", "cpus": "1"}
    assert Server("granian:2").options == {}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_pinning_and_policy_reach_a_process_tree_and_only_the_named_processes() -> None:
    everything = os.sched_getaffinity(0)
    one = {min(everything)}
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
         "time.sleep(60)"]
    )  # fmt: skip
    children: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while not children:
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
            children = [p for p, row in _proc_table().items() if row[0] == parent.pid]
        (child,) = children
        Bench._each([parent.pid], lambda name: name == "postgres", _affinity(one))
        assert os.sched_getaffinity(parent.pid) == os.sched_getaffinity(child) == everything
        Bench._each([parent.pid], lambda _name: True, _affinity(one))
        assert os.sched_getaffinity(parent.pid) == os.sched_getaffinity(child) == one
        Bench._each([parent.pid], lambda _name: True, _affinity(everything))
        assert os.sched_getaffinity(child) == everything
        Bench._each([parent.pid], lambda _name: True, _policy(os.SCHED_BATCH))
        assert os.sched_getscheduler(parent.pid) == os.sched_getscheduler(child) == os.SCHED_BATCH
        Bench._each([parent.pid], lambda _name: True, _policy(os.SCHED_OTHER))
        assert os.sched_getscheduler(child) == os.SCHED_OTHER
    finally:
        for pid in children:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
