"""uvicorn's HTTP protocol with one write() per response instead of two.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and the body in a second write() when it sends the body. Each write
is a syscall on the server, and a client whose read returns the head alone goes back to
sleep and wakes again for the body. On this project's 2-core benchmark box, where a context
switch is dear (issue 5, docs/PERFORMANCE.md), that second wake-up and syscall were a
measurable share of a checkout. Joining the two changes no byte on the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["JoinedWrites", "OneWriteHttpToolsProtocol"]


class JoinedWrites:
    """A transport that sends a write together with the one right after it.

    The first write of a pair is held until the next write, which sends both in one call,
    or until the end of the current turn of the event loop, whichever comes first: uvicorn
    sends a head and its body back to back, so they leave together, and a write nothing
    follows (a streamed chunk, ``100 Continue``) leaves one turn later. Anything else is the
    wrapped transport's.
    """

    __slots__ = ("_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self.transport.write(held + data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Send what is held now."""
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn --http`` with :class:`JoinedWrites` between the protocol and its socket."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joined = JoinedWrites(transport, asyncio.get_running_loop())
        super().connection_made(joined)  # type: ignore[arg-type]

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol gets the socket itself: its frames keep their own timing.
        if isinstance(self.transport, JoinedWrites):
            self.transport.flush()
            self.transport = self.transport.transport
        super().handle_websocket_upgrade()
