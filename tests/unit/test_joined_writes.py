"""JoinedWrites: a write leaves with the next one, or at the end of the loop's turn."""

from __future__ import annotations

import asyncio
from typing import Any

from server.infra.uvicorn_protocol import JoinedWrites


class _Recording(asyncio.Transport):
    """A transport that records what reaches the socket, call by call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(bytes(data))

    def write_eof(self) -> None:
        self.calls.append("eof")

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_head_and_its_body_leave_in_one_write() -> None:
    raw = _Recording()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n")
    assert raw.calls == []
    joined.write(b"{}")
    assert raw.calls == [b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}"]
    await _next_turn()
    assert len(raw.calls) == 1  # the scheduled flush finds nothing held


async def test_a_write_nothing_follows_leaves_at_the_end_of_the_turn() -> None:
    raw = _Recording()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await _next_turn()
    assert raw.calls == [b"HTTP/1.1 100 Continue\r\n\r\n"]


async def test_streamed_chunks_keep_their_order() -> None:
    raw = _Recording()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    for chunk in (b"head", b"a", b"b"):
        joined.write(chunk)
    await _next_turn()
    joined.write(b"c")
    joined.writelines([b"d", b"e"])
    assert b"".join(raw.calls) == b"headabcde"
    assert raw.calls == [b"heada", b"b", b"cde"]


async def test_close_and_write_eof_send_what_is_held_first() -> None:
    raw = _Recording()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"last")
    joined.write_eof()
    joined.write(b"after eof")  # held; close sends it before closing
    joined.close()
    assert raw.calls == [b"last", "eof", b"after eof", "close"]


async def test_abort_drops_what_is_held_and_a_closed_socket_gets_nothing() -> None:
    raw = _Recording()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"never sent")
    joined.abort()
    await _next_turn()
    assert raw.calls == ["abort"]

    raw = _Recording()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    joined.write(b"too late")
    raw.closing = True  # the peer went away before the turn ended
    await _next_turn()
    assert raw.calls == []


async def test_everything_else_is_the_wrapped_transports() -> None:
    raw = _Recording()
    joined = JoinedWrites(raw, asyncio.get_running_loop())
    assert joined.get_extra_info("peername") == ("127.0.0.1", 5)
    assert joined.is_closing() is False
    assert joined.transport is raw
