"""Request-head limits in the server itself (issue 15 Medium 11), not only in the load balancer.

uvicorn bounds neither how long a client may take to send a request head nor how large the head
may grow: httptools buffers a header value until its line ends, so 100 connections each sending
3 MB of an unfinished header held ~300 MB, and a connection that stops halfway through its head
stays open for ever (uvicorn's keep-alive timer only runs between requests).

:func:`guarded_http_protocol` returns uvicorn's httptools protocol with both bounds:

* **time**: a request head must be complete within ``timeout`` seconds, counted from the
  connection's opening (first request) or from the first byte of the next request on a kept-alive
  connection. Otherwise the server answers 408 (if the client had started) and closes; a sweep
  checks every connection's deadline every second (a quarter of the timeout if that is shorter).
  Like haproxy's ``timeout http-request``, this is the slowloris defence.
* **size**: a request line plus headers over ``max_bytes`` is answered 431 and the connection
  closed; an unfinished head is refused as soon as the bytes received for it pass the limit, so
  a connection never holds more than the limit plus one socket read (asyncio reads up to 256 KiB).

Once the head is complete nothing here runs: the body, the app and a WebSocket upgrade (handed to
the websockets protocol, with its own handshake and ping timeouts) are uvicorn's as before. The
cost on the hot path is a clock read per request head and a counter per read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.log import event

log = logging.getLogger("voice.access")
_RESPONSES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
}


class _HeadTooLarge(Exception):
    """Raised from a parser callback; httptools hands it back as the ``__context__`` of an
    ``HttpParserCallbackError``."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request head."""

    # Slots: four more keys in uvicorn's already large instance dict cost microseconds per connection.
    __slots__ = ("_head_bytes", "_head_deadline", "_in_head", "_read_bytes")
    head_timeout: float = 10.0
    max_head_bytes: int = 64 * 1024
    # One sweep per server, not a timer per connection (a timer costs microseconds, a
    # connection's share of the sweep a comparison): each class guarded_http_protocol makes
    # serves one uvicorn server, so this is that server's state.
    _sweeping: ClassVar[asyncio.AbstractEventLoop | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # from the connection's opening until its first head is complete
        self._head_bytes = 0  # received since the current head began (whole reads: an upper bound)
        self._read_bytes = 0
        self._head_deadline = self.loop.time() + self.head_timeout
        cls = type(self)
        if cls._sweeping is not self.loop:
            cls._sweeping = self.loop
            self.loop.call_later(cls._sweep_interval(), cls._sweep, self.loop, self.connections)

    @classmethod
    def _sweep_interval(cls) -> float:
        return min(1.0, cls.head_timeout / 4)

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Close the connections whose head is past its deadline; uvicorn's ``connections`` holds
        every open HTTP connection (an upgraded one leaves it for the websockets protocol's)."""
        now, guarded = loop.time(), False
        for connection in list(connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                guarded = True
                if connection._in_head and now >= connection._head_deadline:
                    started = connection._head_bytes > 0
                    connection._refuse(408 if started else None, "no complete request head in time")
        if guarded and cls._sweeping is loop:
            loop.call_later(cls._sweep_interval(), cls._sweep, loop, connections)
        elif cls._sweeping is loop:
            cls._sweeping = None  # idle: the next connection starts the sweep again

    # The same steps as HttpToolsProtocol.data_received (uvicorn 0.30-0.55), plus the size check:
    # uvicorn's own version turns every parser error, ours included, into a 400.
    def data_received(self, data: bytes) -> None:
        self._read_bytes = len(data)
        if self._in_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, "request head over the size limit")
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        else:
            if self._in_head and self._head_bytes > self.max_head_bytes:
                self._refuse(431, "unfinished request head over the size limit")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head = True
            self._head_bytes = self._read_bytes
            self._head_deadline = self.loop.time() + self.head_timeout

    def on_headers_complete(self) -> None:
        self._in_head = False
        # _head_bytes bounds the head from above, so the exact sum is needed only past the limit.
        if self._head_bytes > self.max_head_bytes and self._head_size() > self.max_head_bytes:
            raise _HeadTooLarge
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse(self, status: int | None, reason: str) -> None:
        self._in_head = False
        if self.transport.is_closing():
            return
        event(
            log,
            "http refused",
            status=status or 0,
            reason=reason,
            client=self.client[0] if self.client else None,
        )
        # Answer only between responses: mid-response (a pipelined request) the bytes would mix.
        if status is not None and (self.cycle is None or self.cycle.response_complete):
            head = _RESPONSES[status] + b"content-length: 0\r\nconnection: close\r\n\r\n"
            self.transport.write(head)
        self.transport.close()


def guarded_http_protocol(timeout: float, max_bytes: int) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    attributes: dict[str, Any] = {"head_timeout": timeout, "max_head_bytes": max_bytes}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attributes)
