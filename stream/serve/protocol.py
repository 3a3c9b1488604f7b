"""uvicorn's httptools protocol, writing each response in one send instead of two.

uvicorn writes a response's status line and headers when the application sends
`http.response.start`, and its body when it sends `http.response.body`: two `send` system calls
per response, each of which on loopback also runs the receiver's side of TCP and wakes it. The
event loop holds the GIL through both (uvloop does not release it for a non-blocking send). With
py-spy (`--gil`) under `tickcast bench http`, those two writes were 28 % of the time the serving
process held the GIL for uncached single-window requests, more than anything else the process
does for a request.

`OneWriteTransport` keeps the writes of one turn of the event loop and sends them together at the
start of the next turn (one `call_soon` a response): a response whose head and body are sent in
one turn, as every response of the API is, leaves in one send. Nothing waits longer than that
turn, so a streamed response or uvicorn's own `100 Continue` goes out as before, only joined with
whatever else was written in the same turn. Closing sends what is held first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteTransport:
    """A transport that sends the writes of one event loop turn as one write."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        if not self._transport.is_closing():  # the peer went away: nothing to send it
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._held)

    def __getattr__(self, name: str) -> Any:
        # everything else (is_closing, get_extra_info, pause_reading, abort, ...) as is
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `OneWriteTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
