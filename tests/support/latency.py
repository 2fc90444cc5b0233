"""A TCP proxy in front of a redis-server that adds network latency and counts round trips.

A round trip starts when a client sends after it has been answered (or sends its first bytes):
a pipeline of 500 commands is one, 500 commands sent one by one are 500. The proxy waits
``delay`` seconds before forwarding the first bytes of each round trip, as a link ``delay``
long would; the rest of a pipeline follows at loopback speed.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LatencyProxy:
    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.target = port
        self.delay = delay
        self.round_trips = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self._writers.add(client)
        server_reader, server = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers.add(server)
        answered = [True]

        async def requests() -> None:
            while data := await client_reader.read(65536):
                if answered[0]:
                    answered[0] = False
                    self.round_trips += 1
                    if self.delay:
                        await asyncio.sleep(self.delay)
                server.write(data)
                await server.drain()
            server.close()

        async def replies() -> None:
            while data := await server_reader.read(65536):
                answered[0] = True
                client.write(data)
                await client.drain()
            client.close()

        try:
            await asyncio.gather(requests(), replies(), return_exceptions=True)  # resets end either
        finally:
            for writer in (client, server):
                self._writers.discard(writer)
                writer.close()
            self._handlers.discard(handler)
