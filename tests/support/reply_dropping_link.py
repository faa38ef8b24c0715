"""A TCP forwarder for gRPC that can lose a reply: the ambiguous failure, for real.

Between a gRPC client and server (plaintext HTTP/2), it forwards every byte, reading the
server's side frame by frame. Armed, it withholds the next response the server sends (the
first HEADERS frame of a call, sent once the handler has finished) and resets the
connection instead: the server has done the work and committed, the client sees
UNAVAILABLE and cannot tell whether anything happened. Calls after that, on a new
connection, go through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

_FRAME_HEADER_BYTES = 9
_HEADERS = 0x1


class ReplyDroppingLink:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._to_drop = 0
        self.replies_dropped = 0
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def drop_next_replies(self, count: int = 1) -> None:
        """Lose the next ``count`` replies (one per connection: each loss resets it)."""
        self._to_drop = count

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(
            _pipe(reader, upstream_writer),
            self._replies(upstream_reader, writer, upstream_writer),
            return_exceptions=True,
        )

    async def _replies(
        self,
        upstream: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                header = await upstream.readexactly(_FRAME_HEADER_BYTES)
                length = int.from_bytes(header[:3], "big")
                stream_id = int.from_bytes(header[5:9], "big") & 0x7FFF_FFFF
                payload = await upstream.readexactly(length)
                if header[3] == _HEADERS and stream_id != 0 and self._to_drop > 0:
                    self._to_drop -= 1
                    self.replies_dropped += 1
                    return  # the finally resets both sides: the reply never arrives
                client.write(header + payload)
                await client.drain()
        finally:
            for side in (client, upstream_writer):
                with contextlib.suppress(Exception):
                    side.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.transport.abort()


@asynccontextmanager
async def reply_dropping_link(address: str) -> AsyncIterator[ReplyDroppingLink]:
    """A link to the gRPC server at ``address`` (host:port) on a port of its own."""
    host, port = address.rsplit(":", 1)
    link = ReplyDroppingLink(host, int(port))
    await link.start()
    try:
        yield link
    finally:
        await link.stop()
