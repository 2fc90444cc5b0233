"""A minimal WebSocket client for load: upgrade, read the first frame, close (RFC 6455).

The ``websockets`` client costs about a millisecond of CPU per connection, which on two cores
would make the generator, not the server, the bottleneck of the consume rows. This one sends a
fixed upgrade request (no extensions offered, so no permessage-deflate on either side), reads
the response head and the first frame, then sends a close frame and waits for the server's
close and EOF, as a browser does. It checks the status line but not ``Sec-WebSocket-Accept``:
it is a load generator on loopback, not a client to trust.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's sample key: any 16 base64-encoded bytes will do
# FIN + close, masked, 2-byte payload 1000 (normal closure); the zero mask leaves it readable.
CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00" + struct.pack("!H", 1000)
OP_TEXT, OP_CLOSE = 0x1, 0x8
MAX_FRAME = 1 << 20


class Refused(Exception):
    """The server did not upgrade, or closed instead of sending a frame."""


@dataclass(frozen=True)
class FirstFrame:
    payload: bytes


def upgrade_request(host: str, port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n\r\n"
    ).encode("latin-1")


async def _frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if length > MAX_FRAME:
        raise Refused(f"a {length}-byte first frame")
    mask = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(length)
    if mask:  # servers must not mask (RFC 6455 §5.1), but reading one costs nothing
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


class Session:
    """One connection: ``await open()`` returns the first frame; ``await close()`` ends it."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._request = upgrade_request(host, port, path)
        self._host, self._port = host, port
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None

    async def open(self) -> FirstFrame:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        self._writer.write(self._request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise Refused(head.split(b"\r\n", 1)[0].decode("latin-1", "replace"))
        opcode, payload = await _frame(self._reader)
        if opcode == OP_CLOSE:
            reason = payload[2:].decode("utf-8", "replace")
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            raise Refused(f"closed {code} {reason}")
        if opcode != OP_TEXT:
            raise Refused(f"first frame has opcode {opcode}")
        return FirstFrame(payload)

    async def close(self) -> None:
        """Send close, then read (whatever the server still sends, and its close) until EOF."""
        if self._writer is None or self._reader is None:
            return
        try:
            if not self._writer.is_closing():
                self._writer.write(CLOSE_FRAME)
                while await self._reader.read(4096):
                    pass
        except OSError:
            pass
        finally:
            self._writer.close()
