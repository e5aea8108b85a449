"""How the hot path's Redis line matches replies to calls, fed bytes by hand (no socket)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from server.infra.redis import _Replies


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def calls(replies: _Replies, n: int) -> list[asyncio.Future[object]]:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[object]] = [loop.create_future() for _ in range(n)]
    replies.waiting.extend(futures)
    return futures


async def test_replies_split_across_reads_reach_their_calls_in_order() -> None:
    replies = _Replies()
    first, second, third = calls(replies, 3)
    wire = b"*2\r\n$2\r\nok\r\n:300\r\n+OK\r\n$5\r\nhello\r\n"
    for at in range(0, len(wire), 3):
        replies.data_received(wire[at : at + 3])
    assert [first.result(), second.result(), third.result()] == [["ok", 300], "OK", "hello"]
    assert not replies.waiting


async def test_errors_fail_only_their_call() -> None:
    replies = _Replies()
    noscript, wrong, loading, noauth, fine = calls(replies, 5)
    replies.data_received(
        b"-NOSCRIPT No matching script\r\n-ERR wrong type\r\n"
        b"-LOADING Redis is loading the dataset in memory\r\n"
        b"-NOAUTH Authentication required.\r\n:1\r\n"
    )
    with pytest.raises(NoScriptError):
        noscript.result()
    with pytest.raises(ResponseError, match="wrong type"):
        wrong.result()
    # Redis that cannot serve now is "down" to RedisGate (a redis-py ConnectionError).
    with pytest.raises(RedisConnectionError, match="loading"):
        loading.result()
    with pytest.raises(RedisConnectionError, match="Authentication"):
        noauth.result()
    assert fine.result() == 1


async def test_a_timed_out_call_keeps_its_turn_and_drops_the_connection() -> None:
    replies = _Replies()
    transport = FakeTransport()
    replies.transport = transport  # type: ignore[assignment]
    late, next_one = calls(replies, 2)
    replies.expire(late)
    with pytest.raises(TimeoutError):
        late.result()
    assert transport.aborted and not replies.open
    # Should the late reply still come, it is skipped, not handed to the next call.
    replies.data_received(b"$4\r\nlate\r\n$4\r\nmine\r\n")
    assert next_one.result() == "mine"


async def test_a_lost_connection_fails_every_call_in_flight() -> None:
    replies = _Replies()
    pending = calls(replies, 3)
    replies.connection_lost(OSError("reset by peer"))
    for call in pending:
        with pytest.raises(ConnectionError, match="reset by peer"):
            call.result()
    assert not replies.open and not replies.waiting
