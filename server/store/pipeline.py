"""Automatic pipelining: commands issued within one event-loop turn travel as one write and
their replies are read back in order, so the Python client's per-command overhead (connection
checkout, retry wrapper, pipeline object) is paid once per batch instead of once per command.

Under load, a mint's ``INCR``/``PEXPIRE``/``PTTL``/``SET`` and every other concurrent request's
commands share one round trip. At rest a batch holds one request's commands and costs what a
plain pipeline costs.

Only for a standalone or Sentinel-managed master (one connection serves every key); a cluster
routes per key and keeps redis-py's cluster pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis

Command = tuple[Any, ...]
MAX_BATCH = 1024
MAX_IN_FLIGHT = 8


class AutoPipeline:
    def __init__(
        self,
        client: Redis,
        timeout: float = 2.0,
        check: Callable[[], None] | None = None,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._client = client
        self._timeout = timeout
        # Called before a batch is sent and after its replies are read; raising fails the
        # batch (the Sentinel failover fence: nothing sent or believed across a promotion).
        self._check = check or (lambda: None)
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def execute(self, *commands: Command) -> asyncio.Future[list[Any]]:
        """Queue ``commands`` (sent back to back, in order); the future gets their replies.

        A reply that is an error is returned as the exception object, like redis-py's
        ``pipeline.execute(raise_on_error=False)``; a lost connection fails the whole future.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((commands, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]) -> None:
        async with self._slots:
            pool = self._client.connection_pool
            try:
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            except Exception as exc:
                _fail(batch, exc)
                return
            try:
                self._check()
                flat = [command for commands, _ in batch for command in commands]
                # One deadline for the whole batch instead of one timer per reply (math.inf turns
                # off redis-py's per-read timeout; the batch's own timeout bounds it).
                results: list[tuple[asyncio.Future[list[Any]], list[Any]]] = []
                async with asyncio.timeout(self._timeout):
                    await connection.send_packed_command(pack(flat), check_health=False)
                    for commands, future in batch:
                        replies: list[Any] = []
                        for _ in commands:
                            try:
                                replies.append(await connection.read_response(timeout=math.inf))
                            except rexc.ResponseError as error:  # one command's error, the stream goes on
                                replies.append(error)
                        results.append((future, replies))
                self._check()
                for future, replies in results:
                    if not future.done():
                        future.set_result(replies)
            except BaseException as exc:
                # The connection is in an unknown state (half-read replies): drop it.
                await connection.disconnect()
                _fail(batch, exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                await pool.release(connection)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its futures already failed
                await task


def pack(commands: Sequence[Command]) -> bytes:
    """RESP arrays of bulk strings for every command, in one buffer. redis-py's packer does the
    same per command with more generality (encoders, buffer cutoffs) than the hot path needs."""
    out = bytearray()
    for command in commands:
        out += b"*%d\r\n" % len(command)
        for arg in command:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out += b"$%d\r\n%b\r\n" % (len(data), data)
    return bytes(out)


def _fail(batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]], exc: BaseException) -> None:
    error = exc if isinstance(exc, Exception) else rexc.ConnectionError("pipeline cancelled")
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
