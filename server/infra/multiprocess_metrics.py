"""Prometheus metrics summed over every process of one `regulars serve` (DESIGN §8).

Each worker process counts into files of its own under ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode) and ``/metrics``, whichever worker answers it, adds
them up (Litestar's ``PrometheusController`` reads them with ``MultiProcessCollector`` whenever
the variable is set). ``serve`` sets the variable to a directory of its own run, emptied at
start: files left by an earlier run would be counted again. The variable must be set before
anything imports prometheus_client, which picks its storage at import.

Counters and histograms of a process that exited still count (what it served was served);
its gauges, which say how things are now, go with it (:func:`forget_process`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "ENV",
    "forget_dead_processes",
    "forget_process",
    "fresh_directory",
    "remove_directory",
]

ENV = "PROMETHEUS_MULTIPROC_DIR"


def fresh_directory(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The directory for this run's metric files, empty: the operator's ``ENV`` if set (its
    ``*.db`` files removed), else a new temporary one. Returns it and whether it is ours to
    remove at exit."""
    given = environ.get(ENV)
    if not given:
        return Path(tempfile.mkdtemp(prefix="regulars-metrics-")), True
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path, False


def remove_directory(path: Path) -> None:
    """Remove a directory :func:`fresh_directory` made, with what is in it."""
    shutil.rmtree(path, ignore_errors=True)


def forget_process(pid: int | None = None) -> None:
    """Drop the live gauges of process ``pid`` (this one by default) when it exits; nothing
    outside multiprocess mode."""
    if not os.environ.get(ENV):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid() if pid is None else pid)  # type: ignore[no-untyped-call]


def forget_dead_processes() -> None:
    """Drop the live gauges of processes that ended without saying so (killed, crashed): a
    restarted worker calls this at start, so a dead worker's in-progress requests do not
    stay in the sum for ever."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            forget_process(int(pid_text))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    with contextlib.suppress(OSError):
        # A zombie (ended, not yet reaped by its parent) has nothing left in flight either.
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    return True
