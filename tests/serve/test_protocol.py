"""The serving protocol's transport sends what one turn of the event loop wrote in one write:
a response's head and body leave in one send (stream/serve/protocol.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.serve.protocol import OneWriteTransport


class Recorder(asyncio.Transport):
    """A transport that records its writes (pure logic: no socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


def test_the_writes_of_one_turn_leave_as_one() -> None:
    async def scenario() -> list[bytes]:
        inner = Recorder()
        transport = OneWriteTransport(inner, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        assert inner.writes == []  # held until the turn ends
        assert transport.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        transport.write(b"next")  # a later turn: a write of its own
        await asyncio.sleep(0)
        return inner.writes

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"next"]


def test_close_sends_what_is_held_and_a_closed_peer_gets_nothing() -> None:
    async def scenario() -> tuple[Recorder, Recorder]:
        loop = asyncio.get_running_loop()
        closing = Recorder()
        transport = OneWriteTransport(closing, loop)
        transport.write(b"bye")
        transport.close()
        gone = Recorder()
        other = OneWriteTransport(gone, loop)
        other.write(b"lost")
        gone.closed = True  # the peer went away before the turn ended
        await asyncio.sleep(0)
        assert other.get_extra_info("peername") == ("127.0.0.1", 5)  # the rest passes through
        return closing, gone

    closing, gone = asyncio.run(scenario())
    assert closing.writes == [b"bye"] and closing.closed
    assert gone.writes == []
