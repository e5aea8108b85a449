"""The bench's ``--dirty-background-bytes``: the host setting is changed for a run and put back."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from loadtests import bench
from loadtests.bench import Writeback


def _vm(tmp_path: Path, ratio: int, size: int) -> Path:
    """A stand-in for /proc/sys/vm with the three files the bench reads."""
    for name, value in (
        ("dirty_background_ratio", ratio),
        ("dirty_background_bytes", size),
        ("dirty_expire_centisecs", 3000),
    ):
        (tmp_path / name).write_text(f"{value}\n")
    return tmp_path


def test_a_ratio_in_force_comes_back_after_the_run(tmp_path: Path) -> None:
    vm = _vm(tmp_path, ratio=10, size=0)
    writeback = Writeback(vm)
    assert writeback.describe() == "writeback: dirty_background 10 %, dirty_expire 30 s"
    writeback.apply(4 << 20)
    assert (vm / "dirty_background_bytes").read_text() == str(4 << 20)
    (vm / "dirty_background_ratio").write_text("0")  # what the kernel does on that write
    writeback.restore()
    assert (vm / "dirty_background_ratio").read_text() == "10"
    writeback.restore()  # a second restore changes nothing
    assert (vm / "dirty_background_ratio").read_text() == "10"


def test_a_byte_threshold_in_force_comes_back_after_the_run(tmp_path: Path) -> None:
    vm = _vm(tmp_path, ratio=0, size=64 << 20)
    writeback = Writeback(vm)
    writeback.apply(4 << 20)
    writeback.restore()
    assert (vm / "dirty_background_bytes").read_text() == str(64 << 20)
    assert (vm / "dirty_background_ratio").read_text() == "0\n"  # untouched


def test_the_bench_restores_the_setting_when_the_run_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = _vm(tmp_path, ratio=10, size=0)
    monkeypatch.setattr(bench.Writeback.__init__, "__defaults__", (vm,))

    def run(args: object) -> int:
        assert (vm / "dirty_background_bytes").read_text() == "4194304"
        raise RuntimeError("the stack did not start")

    monkeypatch.setattr(bench, "_run", run)
    on_term = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="did not start"):
        bench.main(["--quick", "--dirty-background-bytes", "4194304"])
    assert (vm / "dirty_background_ratio").read_text() == "10"
    assert signal.getsignal(signal.SIGTERM) is on_term
