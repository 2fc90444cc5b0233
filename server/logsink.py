"""The access log's writer: one line per request, at a fraction of the ``logging`` module's cost.

A line through ``logging`` (a LogRecord, the redacting filter, the formatter, a locked write and a
flush) cost ~80 µs, more than the whole mint it logged (issue 11). Here a line is one f-string of
pre-encoded pieces appended to a ``bytearray``; the buffer goes out in one ``os.write`` from the
event loop every ``VOICE_LOG_FLUSH_SECONDS`` (a timer armed by the first line after a flush, so an
idle server wakes for nothing), when it passes :data:`FLUSH_BYTES`, when the app shuts down
(uvicorn's SIGTERM path runs the lifespan's exit) and at interpreter exit. A loop timer rather
than a thread: the lines then never interleave with ``logging``'s own writes to the same stream,
and the measured hot-path cost was the same (README, Benchmarks).

The line has the fields and layout of :class:`server.log.JsonFormatter` (or ``TextFormatter``),
so a log pipeline sees one shape; the path and query are redacted as
every other line's text is (:func:`server.core.redaction.redact_target`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import re
import secrets
import sys
import time
from json.encoder import encode_basestring_ascii as _quoted
from typing import IO

from server.core.redaction import redact_target

FLUSH_BYTES = 64 * 1024
# A client's X-Request-Id is kept when it is this plain; anything else gets ours.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class AccessSink:
    """Buffered access lines for one server process; :meth:`close` writes what is left."""

    def __init__(self, fmt: str = "json", flush_seconds: float = 0.2, stream: IO[str] | None = None) -> None:
        self._json = fmt == "json"
        self._flush_seconds = flush_seconds
        self._stream = stream
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        # Request ids: a per-process prefix and a counter, unique across restarts and nodes
        # without a random draw per request.
        self._ids = map(f"{secrets.token_hex(4)}-{{:x}}".format, itertools.count(1))
        atexit.register(self.flush)

    def request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's ``X-Request-Id`` when it is plain, else a fresh one."""
        for name, value in headers:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(text):
                    return text
                break
        return next(self._ids)

    def line(
        self,
        kind: str,
        method: str,
        path: str,
        query: str,
        status: int,
        code: str | None,
        seconds: float,
        client: str | None,
        request_id: str,
    ) -> None:
        """Append one line; ``path`` and ``query`` as received (redacted here)."""
        now = time.time()
        target = redact_target(path, query)
        if self._json:
            text = (
                f'{{"ts": "{self._timestamp(now)}.{int(now * 1000) % 1000:03d}Z", "level": "info", '
                f'"logger": "voice.access", "msg": "{kind}", "method": "{method}", '
                f'"path": {_quoted(target)}, "status": {status}, '
                f'"code": {"null" if code is None else _quoted(code)}, "ms": {seconds * 1000:.2f}, '
                f'"client": {"null" if client is None else _quoted(client)}, '
                f'"request_id": "{request_id}"}}\n'
            )
        else:
            text = (
                f"{time.strftime('%H:%M:%S', time.localtime(now))} INFO    voice.access: {kind} "
                f"method={method} path={target} status={status} ms={seconds * 1000:.2f} "
                f"client={client} code={code} request_id={request_id}\n"
            )
        self._buffer += text.encode("utf-8", "backslashreplace")
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the exit flush writes it
                self._timer = asyncio.get_running_loop().call_later(self._flush_seconds, self.flush)

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data, self._buffer = self._buffer, bytearray()
        stream = self._stream or sys.stderr
        with contextlib.suppress(OSError, ValueError):  # a closed stream at exit: nowhere to write
            stream.flush()  # what logging wrote before stays before
            try:
                fd = stream.fileno()
            except (OSError, ValueError):  # a stream without a descriptor (a test's capture)
                stream.write(data.decode("utf-8"))
                stream.flush()
                return
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)
