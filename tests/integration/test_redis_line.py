"""The hot path's pipelined Redis line against the real Redis: every call gets its own reply,
however many are in flight, and a slow, killed or stopped Redis fails calls the way
RedisGate expects (TimeoutError, ConnectionError) without mixing up later replies."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from server.infra.embedded import free_port
from server.infra.redis import RedisLine, script_sha
from tests.conftest import Stack

ECHO_SCRIPT = "return {ARGV[1], KEYS[1]}"


@pytest.fixture
async def line(stack: Stack) -> RedisLine:
    line = RedisLine(stack.running.redis_url, connect_timeout_s=1.0, reply_timeout_s=0.3)
    yield line  # type: ignore[misc]
    await line.aclose()


@pytest.fixture
async def admin(stack: Stack) -> aioredis.Redis:
    client = aioredis.from_url(stack.running.redis_url, decode_responses=True)
    yield client  # type: ignore[misc]
    await client.aclose()


async def test_concurrent_calls_each_get_their_own_reply(line: RedisLine) -> None:
    key = f"test:line:{uuid.uuid4()}"
    replies = await asyncio.gather(*(line.call("ECHO", f"call-{n}") for n in range(500)))
    assert replies == [f"call-{n}" for n in range(500)]
    counts = await asyncio.gather(*(line.call("INCR", key) for _ in range(200)))
    assert sorted(counts) == list(range(1, 201))


async def test_calls_of_one_turn_reach_redis_in_one_read(
    line: RedisLine, admin: aioredis.Redis
) -> None:
    await line.call("PING")  # connected
    before = (await admin.info("stats"))["total_reads_processed"]
    replies = await asyncio.gather(*(line.call("ECHO", f"call-{n}") for n in range(100)))
    after = (await admin.info("stats"))["total_reads_processed"]
    assert replies == [f"call-{n}" for n in range(100)]
    # One write from the line, plus the INFO above; one read per call without batching.
    assert after - before <= 3


async def test_a_command_error_raises_and_the_line_goes_on(line: RedisLine) -> None:
    key = f"test:line:{uuid.uuid4()}"
    await line.call("SET", key, "not a number")
    with pytest.raises(ResponseError, match="not an integer"):
        await line.call("INCR", key)
    assert await line.call("GET", key) == "not a number"


async def test_evalsha_loads_a_script_redis_does_not_have(
    line: RedisLine, admin: aioredis.Redis
) -> None:
    await admin.script_flush()
    sha = script_sha(ECHO_SCRIPT)
    assert await line.evalsha(sha, ECHO_SCRIPT, ["k"], ["a"]) == ["a", "k"]
    assert await admin.script_exists(sha) == [True]


async def test_a_reply_that_comes_too_late_fails_only_its_call(
    line: RedisLine, admin: aioredis.Redis
) -> None:
    assert await line.call("ECHO", "warm") == "warm"
    await admin.execute_command("CLIENT", "PAUSE", "600", "ALL")
    with pytest.raises(TimeoutError):
        await line.call("ECHO", "paused")
    await asyncio.sleep(0.7)  # the pause is over
    # The line was dropped with the late call; the next one connects again and gets its own
    # reply, not the one Redis owed the call that timed out.
    assert await line.call("ECHO", "after") == "after"


async def test_a_killed_connection_fails_calls_in_flight_and_reconnects(
    line: RedisLine, admin: aioredis.Redis
) -> None:
    assert await line.call("CLIENT", "SETNAME", "hot-line") == "OK"
    blocked = asyncio.ensure_future(line.call("BLPOP", f"test:line:{uuid.uuid4()}", "0.2"))
    await asyncio.sleep(0.05)
    [mine] = [c["id"] for c in await admin.client_list() if c["name"] == "hot-line"]
    assert await admin.client_kill_filter(_id=mine) == 1
    with pytest.raises(ConnectionError):
        await blocked
    assert await line.call("ECHO", "again") == "again"


async def test_nothing_listening_fails_with_an_os_error() -> None:
    # A stopped Redis (the session's is shared with other tests; test_redis_faults stops and
    # restarts it with the whole app) refuses the connection: RedisGate takes OSError as down.
    line = RedisLine(f"redis://127.0.0.1:{free_port()}/0", 1.0, 0.3)
    for _ in range(2):  # and a failed connect leaves nothing half-open behind
        with pytest.raises(OSError):
            await line.call("PING")


async def test_the_url_selects_the_database(stack: Stack, admin: aioredis.Redis) -> None:
    key = f"test:line:{uuid.uuid4()}"
    line = RedisLine(stack.running.redis_url.rsplit("/", 1)[0] + "/3", 1.0, 0.3)
    try:
        await line.call("SET", key, "in db 3")
    finally:
        await line.aclose()
    assert await admin.get(key) is None
    other = aioredis.from_url(stack.running.redis_url.rsplit("/", 1)[0] + "/3")
    try:
        assert await other.get(key) == b"in db 3"
    finally:
        await other.aclose()
