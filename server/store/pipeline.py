"""Automatic pipelining: commands issued within one event-loop turn travel as one write on one
connection, and their replies come back in order to the futures that asked for them.

Under load, every concurrent mint's script call and every session's ``DEL`` share one round
trip. At rest a batch holds one request's commands and costs what a plain command costs.

The connection is our own ``asyncio.Protocol`` with hiredis (the C parser redis-py uses) fed
straight from ``data_received``: no task, stream reader or timeout context per batch, one timer
for the whole connection. ``scripts/bench`` measured redis-py's per-batch read path (pool
checkout, a task, ``read_response`` per reply) at ~40 µs of a ~150 µs mint; here a mint's share
of a batch is a few µs. Where to connect (host, port, TLS, unix socket, the Sentinel-elected
master) and how to authenticate is read from the redis-py client the rest of the store uses.

Only for a standalone or Sentinel-managed master (one connection serves every key); a cluster
routes per key and keeps redis-py's cluster pipeline.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

log = logging.getLogger("voice.store")
Command = tuple[Any, ...]
Check = Callable[[], None]


class AutoPipeline:
    def __init__(
        self,
        client: Redis,
        timeout: float = 2.0,
        check: Check | None = None,
        hello: Sequence[Command] = (),
    ) -> None:
        self._client = client
        self._timeout = timeout
        # Called before a batch is sent and before a reply is believed; raising fails the
        # request (the Sentinel failover fence: nothing sent or believed across a promotion).
        self._check = check or (lambda: None)
        self._hello = tuple(hello)  # sent first on every new connection (e.g. SCRIPT LOAD)
        self._queue: list[_Request] = []
        self._buffer = bytearray()
        self._scheduled = False
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False
        self.observe: Callable[[float], None] | None = None  # each batch's round trip, in seconds
        # Run at the start of each flush: they may queue commands that join the batch.
        self.before_flush: list[Callable[[], None]] = []

    def execute(self, *commands: Command) -> asyncio.Future[list[Any]]:
        """Queue ``commands`` (sent back to back, in order); the future gets their replies.

        A reply that is an error is returned as the exception object (``ResponseError``), like
        redis-py's ``pipeline.execute(raise_on_error=False)``; a lost connection or a timeout
        fails the whole future.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if self._closed:
            future.set_exception(rexc.ConnectionError("the store is closed"))
            return future
        self._queue.append(_Request(len(commands), future))
        pack_into(self._buffer, commands)
        self.wake()
        return future

    def wake(self) -> None:
        """Make sure a flush runs at the end of this event-loop turn."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def drop(self) -> None:
        """Close the connection (in-flight requests fail); the next batch opens a new one."""
        if self._connection is not None:
            self._connection.abort(rexc.ConnectionError("connection dropped"))
            self._connection = None

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self.drop()
        _fail(self._take(), rexc.ConnectionError("the store is closed"))

    def _take(self) -> list[_Request]:
        batch, self._queue, self._buffer = self._queue, [], bytearray()
        return batch

    def _flush(self) -> None:
        for hook in self.before_flush:
            try:
                hook()
            except Exception:  # the batch still goes out; the hook fails its own requests
                log.exception("store: a before-flush hook failed")
        self._scheduled = False
        if not self._queue:
            return
        connection = self._connection
        if connection is None or connection.lost:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect(), name="store-connect")
            return  # the queue waits for the connection, then flushes
        data = bytes(self._buffer)
        batch = self._take()
        try:
            self._check()
        except Exception as exc:
            _fail(batch, exc)
            return
        connection.send(data, batch)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                self._connection = await _Connection.open(self)
        except Exception as exc:
            if not isinstance(exc, rexc.RedisError):
                exc = rexc.ConnectionError(f"cannot connect to the store ({type(exc).__name__}: {exc})")
            _fail(self._take(), exc)
        finally:
            self._connecting = None
        if self._queue and not self._closed:
            self._flush()


class _Request:
    __slots__ = ("count", "future", "last", "replies", "sent_at")

    def __init__(self, count: int, future: asyncio.Future[list[Any]]) -> None:
        self.count = count
        self.future = future
        self.replies: list[Any] = []
        self.sent_at = 0.0
        self.last = False  # the last request of its batch: its reply ends the round trip


class _Connection(asyncio.Protocol):
    """One connection: batches go out whole, each reply goes to the oldest request waiting."""

    def __init__(self, owner: AutoPipeline) -> None:
        self._owner = owner  # its reply timeout, fence check and round-trip observer apply here
        self._timeout = owner._timeout
        self._check = owner._check
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=rexc.ResponseError)  # error replies are values
        self._waiting: collections.deque[_Request] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.lost = False

    @classmethod
    async def open(cls, owner: AutoPipeline) -> _Connection:
        loop = asyncio.get_running_loop()
        pool = owner._client.connection_pool
        # A connection object redis-py would use (never connected): its settings, with redis-py's
        # defaults for what the URL leaves out (localhost, 6379, db 0), and its SSLContext.
        sample: Any = pool.make_connection()  # type: ignore[no-untyped-call]
        factory = lambda: cls(owner)  # noqa: E731
        if isinstance(pool, SentinelConnectionPool):
            host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
            _, connection = await loop.create_connection(factory, host, port)
        elif getattr(sample, "path", None):
            _, connection = await loop.create_unix_connection(factory, sample.path)
        else:
            tls = sample.ssl_context.get() if isinstance(sample, SSLConnection) else None
            _, connection = await loop.create_connection(factory, sample.host, sample.port, ssl=tls)
        setup: list[Command] = []
        if sample.password:
            user = [sample.username] if sample.username else []
            setup.append(("AUTH", *user, sample.password))
        if sample.db:
            setup.append(("SELECT", sample.db))
        setup += owner._hello
        try:
            if setup:
                request = _Request(len(setup), loop.create_future())
                connection.send(pack(setup), [request])
                for reply in await request.future:
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException:
            connection.abort(rexc.ConnectionError("connection set-up failed"))
            raise
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes, batch: list[_Request]) -> None:
        assert self._transport is not None
        now = self._loop.time()
        for request in batch:
            request.sent_at = now
        batch[-1].last = True
        self._waiting.extend(batch)
        self._transport.write(data)
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    raise rexc.InvalidResponse("a reply nobody asked for")
                head = waiting[0]
                head.replies.append(reply)
                if len(head.replies) == head.count:
                    waiting.popleft()
                    if not head.future.done():
                        try:
                            self._check()
                        except Exception as exc:
                            head.future.set_exception(exc)
                        else:
                            head.future.set_result(head.replies)
                    if head.last and self._owner.observe is not None:
                        self._owner.observe(self._loop.time() - head.sent_at)
        except (hiredis.ProtocolError, rexc.InvalidResponse) as exc:
            # Out of step with the server: every reply after this one would go to the wrong request.
            self.abort(rexc.ConnectionError(f"protocol error: {exc}"))

    def _expire(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        overdue = self._waiting[0].sent_at + self._timeout
        if self._loop.time() >= overdue:
            self.abort(rexc.TimeoutError(f"no reply from the store within {self._timeout:g}s"))
        else:
            self._timer = self._loop.call_at(overdue, self._expire)

    def abort(self, error: Exception) -> None:
        self._lose(error)
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(rexc.ConnectionError(f"connection to the store lost ({exc or 'closed'})"))

    def _lose(self, error: Exception) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, collections.deque()
        _fail(waiting, error)


def pack_into(out: bytearray, commands: Sequence[Command]) -> None:
    """Append RESP arrays of bulk strings for ``commands`` to ``out``. redis-py's packer does the
    same per command with more generality (encoders, buffer cutoffs) than the hot path needs."""
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out += b"$%d\r\n%b\r\n" % (len(data), data)


def pack(commands: Sequence[Command]) -> bytes:
    out = bytearray()
    pack_into(out, commands)
    return bytes(out)


def _fail(requests: Sequence[_Request] | collections.deque[_Request], error: Exception) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(error)
