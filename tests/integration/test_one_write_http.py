"""`regulars serve`'s HTTP protocol (one write per response) against uvicorn's own, over real
sockets: every kind of exchange gets the same bytes back from both, apart from the date."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
import websockets
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.infra.uvicorn_protocol import OneWriteHttpToolsProtocol

Send = Callable[[dict[str, Any]], Any]


async def _app(scope: dict[str, Any], receive: Any, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo " + message["text"]})
        await send({"type": "websocket.close", "code": 1000})
        return
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    reply = b'{"path":"' + path.encode() + b'","got":' + str(len(body)).encode() + b"}"
    await send(
        {
            "type": "http.response.start",
            "status": 201 if path == "/created" else 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(reply)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": reply})


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, int]]:
    """uvicorn with its own httptools protocol and with ours, each on its own port."""
    running, ports = [], {}
    for name, protocol in (("uvicorn", HttpToolsProtocol), ("ours", OneWriteHttpToolsProtocol)):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            _app, http=protocol, lifespan="off", log_config=None,
            access_log=False,
        )  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        running.append((server, task))
        ports[name] = sock.getsockname()[1]
    for server, _ in running:
        while not server.started:  # noqa: ASYNC110 - uvicorn.Server has a flag, no event
            await asyncio.sleep(0.01)
    yield ports
    for server, task in running:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _exchange(port: int, raw: bytes, *, then: bytes = b"") -> bytes:
    """Send ``raw`` (and ``then`` once the server answered something), read until the
    server closes or goes quiet, and blank the date header."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    got = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            if not chunk:
                break
            got += chunk
            if then:
                writer.write(then)
                then = b""
    except TimeoutError:
        pass
    writer.close()
    return re.sub(rb"date: [^\r]*\r\n", b"date: -\r\n", got)


def _post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n" % (path.encode(), len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


EXCHANGES = {
    "one request": (_post("/created", b'{"a":1}'), b""),
    "two pipelined on one connection": (_post("/a", b"x") + _post("/created", b"yy"), b""),
    "a streamed, chunked response": (b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n", b""),
    "HEAD": (b"HEAD /created HTTP/1.1\r\nhost: t\r\n\r\n", b""),
    "connection: close": (_post("/bye", b"z", b"connection: close"), b""),
    "100-continue, then the body": (
        b"POST /created HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n",
        b"abc",
    ),
    "a malformed request": (b"NOT HTTP\r\n\r\n", b""),
}


@pytest.mark.parametrize("case", EXCHANGES)
async def test_every_exchange_reads_the_same_as_with_uvicorns_protocol(
    servers: dict[str, int], case: str
) -> None:
    raw, then = EXCHANGES[case]
    theirs = await _exchange(servers["uvicorn"], raw, then=then)
    ours = await _exchange(servers["ours"], raw, then=then)
    assert theirs.startswith(b"HTTP/1.1 ")
    assert ours == theirs


async def test_a_websocket_upgrade_still_works(servers: dict[str, int]) -> None:
    for port in servers.values():
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send("hi")
            assert await ws.recv() == "echo hi"
