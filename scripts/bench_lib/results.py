"""What one measured row holds, whichever load generator produced it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    rate: float  # completed requests (or sessions) per second
    p50: float  # seconds
    p99: float  # seconds
    count: int  # completed requests (or sessions)
    errors: int  # non-2xx answers, socket errors, refused or failed sessions

    @property
    def error_share(self) -> float:
        total = self.count + self.errors
        return self.errors / total if total else 0.0


@dataclass(frozen=True)
class Row:
    key: str  # "a", "b1", ... as the issue names them
    label: str
    generator: str  # "wrk" or "ws" (the Python WebSocket generator)
    result: Measurement
    server_cpu: float  # CPU seconds the server under test used during the measurement
    wall: float  # seconds the measurement took

    @property
    def cpu_per_request(self) -> float:
        """Server CPU seconds per completed request: independent of the load generator."""
        return self.server_cpu / self.result.count if self.result.count else float("nan")

    @property
    def cpu_load(self) -> float:
        """Server CPU seconds per wall second; near 1.0, the server's one event loop was the limit."""
        return self.server_cpu / self.wall if self.wall > 0 else float("nan")


@dataclass(frozen=True)
class MemoryPoint:
    outstanding: int
    memory_usage: float  # mean MEMORY USAGE of sampled token keys, bytes
    sampled: int
    used_memory_delta: float  # INFO memory used_memory growth / outstanding, bytes
