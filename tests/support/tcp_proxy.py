"""A TCP forwarder whose link can be cut or stalled: a real network outage between a client
and a server (e.g. a service and Postgres) without touching the shared server itself.

``cut`` is a server that went away (connections reset, new ones refused); ``stall`` is
one that went silent (a hung host, a black-holed network): connections are accepted
and bytes read, but nothing is forwarded either way. Closing either side of a
connection closes the other, stalled or not, so a client that gives up on a stalled
connection ends its server session too (and Postgres rolls back its transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CuttableLink:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled = False
        self.port = 0

    async def restore(self) -> None:
        """Accept and forward connections (again, on the same port).

        Connections that lived through a stall lost bytes and are dropped first.
        """
        if self._stalled:
            self._stalled = False
            await self.cut()
        if self._server is None:
            self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def stall(self) -> None:
        """Keep accepting and reading, but forward nothing in either direction."""
        self._stalled = True

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._stalled:  # accepted, never connected onward
            await self._pipe(reader, None)
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if writer is not None and not self._stalled:
                    writer.write(data)
                    await writer.drain()
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.transport.abort()


@asynccontextmanager
async def cuttable_link(host: str, port: int) -> AsyncIterator[CuttableLink]:
    link = CuttableLink(host, port)
    await link.restore()
    try:
        yield link
    finally:
        await link.cut()
