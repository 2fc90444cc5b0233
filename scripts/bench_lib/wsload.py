"""The consume rows (e): a Python WebSocket load generator, since wrk cannot speak WebSocket or
use a fresh token per connection.

Tokens are minted before the clock starts (through the real endpoints, so they are exactly what a
client would hold), then ``concurrency`` workers each open a socket with the next token (the
lean client in ``wsclient``), wait for the first frame (``chat.connected`` from us, ``connected``
from the naive baseline), close, and go on, until the tokens run out or ``duration`` has passed.
Latency is connect → first frame; the rate is completed sessions over the whole run, close
handshakes included.

This generator runs on the same CPUs as the server (two on the reference machine), so its
absolute numbers understate the server; only the ratio between the two rows means something,
together with the server CPU per session that ``suite`` records beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence

from scripts.bench_lib.httpclient import BadResponse, KeepAlive
from scripts.bench_lib.results import Measurement
from scripts.bench_lib.wsclient import Refused, Session

OPEN_TIMEOUT = 5.0  # connect, upgrade and first frame
CLOSE_TIMEOUT = 2.0


class MintFailed(RuntimeError):
    pass


async def premint(
    host: str, port: int, path: str, headers: Mapping[str, str], count: int, concurrency: int
) -> list[str]:
    """``count`` tokens from ``path`` (a mint endpoint answering ``{"token": ...}``)."""
    tokens: list[str] = []

    async def worker(quota: int) -> None:
        async with KeepAlive(host, port, headers) as http:
            for _ in range(quota):
                status, body = await http.get(path)
                if status != 200:
                    raise MintFailed(f"GET {path} → {status}: {body[:300]!r}")
                tokens.append(json.loads(body)["token"])

    shares = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]
    try:
        # Bounded: a mint endpoint slower than ~200/s is broken, not slow.
        await asyncio.wait_for(asyncio.gather(*(worker(n) for n in shares if n)), 30 + count / 200)
    except (OSError, asyncio.IncompleteReadError, BadResponse) as exc:
        raise MintFailed(f"minting from {path}: {type(exc).__name__}: {exc}") from exc
    return tokens


def percentile(sorted_values: Sequence[float], share: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


async def consume_load(
    host: str, port: int, paths: Sequence[str], concurrency: int, duration: float, first_event: str
) -> Measurement:
    """Open one socket per path (each carries its own token) with ``concurrency`` at a time."""
    pending: Iterator[str] = iter(paths)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        for path in pending:  # one shared iterator: each path is taken by exactly one worker
            if time.perf_counter() >= deadline:
                return
            session = Session(host, port, path)
            started = time.perf_counter()
            try:
                first = await asyncio.wait_for(session.open(), OPEN_TIMEOUT)
                answered = time.perf_counter()
                frame = json.loads(first.payload)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, Refused, ValueError):
                errors += 1
                continue
            finally:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.close(), CLOSE_TIMEOUT)
            if isinstance(frame, dict) and frame.get("event") == first_event:
                latencies.append(answered - started)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), duration + 30)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Measurement(
        rate=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        count=len(latencies),
        errors=errors,
    )
