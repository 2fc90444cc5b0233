"""A minimal keep-alive HTTP/1.1 GET client, for minting the consume rows' tokens quickly.

httpx spends about a millisecond of CPU per request, so minting tens of thousands of tokens
before a consume row took longer than the tokens live (60 s). This client sends a fixed request
on one connection at a time and reads ``Content-Length`` bodies; it reconnects when the server
closes. Loopback load only: it trusts the server's framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType


class BadResponse(Exception):
    pass


class KeepAlive:
    def __init__(self, host: str, port: int, headers: Mapping[str, str]) -> None:
        self._host, self._port = host, port
        self._extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        request = f"GET {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n{self._extra}\r\n"
        self._writer.write(request.encode("latin-1"))
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise BadResponse(f"bad status line {status_line!r}")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        if "content-length" not in fields:
            raise BadResponse("response without Content-Length")
        body = await self._reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            await self.aclose()
        return int(parts[1]), body

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def __aenter__(self) -> KeepAlive:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
