"""The worker's pacer: a backlog drained in chunks at a share of the time (server/worker.py)."""

from __future__ import annotations

import pytest

from server.worker import Pacer


class Backlog:
    """``items`` due; each call handles up to ``n`` of them and takes ``seconds`` per item on
    a fake clock, which the pacer's rests advance too."""

    def __init__(self, items: int, seconds: float = 0.002) -> None:
        self.items = items
        self.seconds = seconds
        self.now = 0.0
        self.calls: list[int] = []
        self.rests: list[float] = []

    async def job(self, n: int) -> int:
        self.calls.append(n)
        handled = min(n, self.items)
        self.items -= handled
        self.now += handled * self.seconds
        return handled

    async def rest(self, seconds: float) -> bool:
        self.rests.append(seconds)
        self.now += seconds
        return True

    def pacer(self, duty: float, chunk: int) -> Pacer:
        return Pacer(duty, chunk, self.rest, clock=lambda: self.now)


async def test_a_backlog_drains_in_chunks_at_its_share_of_the_time() -> None:
    backlog = Backlog(items=1_000)
    done = await backlog.pacer(duty=0.25, chunk=50).drain(backlog.job, limit=500)
    assert done == 500 and backlog.items == 500
    assert backlog.calls == [50] * 10
    # 0.1 s of work per chunk, then three times that at rest; none after the last chunk.
    assert backlog.rests == pytest.approx([0.3] * 9)
    assert backlog.now == pytest.approx(0.1 * 10 + 0.3 * 9)


async def test_a_chunk_that_handles_nothing_ends_the_drain() -> None:
    backlog = Backlog(items=120)
    done = await backlog.pacer(duty=0.5, chunk=50).drain(backlog.job, limit=500)
    # A short chunk may be orders paid since the job read them: the next chunk still runs.
    assert done == 120 and backlog.calls == [50, 50, 50, 50]
    assert backlog.rests == pytest.approx([0.1, 0.1, 0.04])


async def test_the_last_chunk_is_cut_to_the_limit() -> None:
    backlog = Backlog(items=1_000)
    assert await backlog.pacer(duty=0.5, chunk=40).drain(backlog.job, limit=100) == 100
    assert backlog.calls == [40, 40, 20]


async def test_a_full_share_never_rests() -> None:
    backlog = Backlog(items=1_000)
    assert await backlog.pacer(duty=1.0, chunk=50).drain(backlog.job, limit=200) == 200
    assert backlog.rests == []


async def test_the_drain_ends_when_the_worker_stops() -> None:
    backlog = Backlog(items=1_000)

    async def stopping(seconds: float) -> bool:
        backlog.rests.append(seconds)
        return False

    pacer = Pacer(0.25, 50, stopping, clock=lambda: backlog.now)
    assert await pacer.drain(backlog.job, limit=500) == 50
    assert backlog.calls == [50] and len(backlog.rests) == 1
