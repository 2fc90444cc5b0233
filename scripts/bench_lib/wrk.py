"""Running ``wrk`` (a C load generator, so the client does not eat the server's CPU) and reading
its report: requests/s, the latency percentiles of ``--latency``, and every kind of error."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scripts.bench_lib.results import Measurement

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s*([\d.]+)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkMissing(RuntimeError):
    pass


class WrkFailed(RuntimeError):
    pass


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing(
            "wrk is not installed: `apt-get install wrk` (Debian's package), or run scripts/test, "
            "which installs it"
        )
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk (unknown version)"


@dataclass(frozen=True)
class Load:
    """The same for every wrk row."""

    connections: int
    threads: int
    duration: int  # seconds
    timeout: int = 5  # seconds before wrk counts a request as timed out

    def args(self, duration: int | None = None) -> list[str]:
        seconds = self.duration if duration is None else duration
        return [
            "-t", str(self.threads), "-c", str(self.connections), "-d", f"{seconds}s",
            "--timeout", f"{self.timeout}s", "--latency",
        ]  # fmt: skip


def parse(report: str) -> Measurement:
    """The numbers of one wrk report; a report without them is a failed run."""
    rate, total = _RATE.search(report), _TOTAL.search(report)
    percentiles = {int(m[1]): float(m[2]) * _UNITS[m[3]] for m in _PERCENTILE.finditer(report)}
    if rate is None or total is None or 50 not in percentiles or 99 not in percentiles:
        raise WrkFailed(f"unexpected wrk output:\n{report}")
    non_2xx = _NON_2XX.search(report)
    sockets = _SOCKET.search(report)
    errors = (int(non_2xx[1]) if non_2xx else 0) + (sum(int(g) for g in sockets.groups()) if sockets else 0)
    return Measurement(
        rate=float(rate[1]),
        p50=percentiles[50],
        p99=percentiles[99],
        count=int(total[1]),
        errors=errors,
    )


async def run_wrk(
    load: Load, url: str, headers: Mapping[str, str], duration: int | None = None
) -> Measurement:
    """One wrk run against ``url``; killed if it overruns its duration by 30 s."""
    header_args: list[str] = []
    for name, value in headers.items():
        header_args += ["-H", f"{name}: {value}"]
    command: Sequence[str] = [wrk_binary(), *load.args(duration), *header_args, url]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    seconds = load.duration if duration is None else duration
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise WrkFailed(f"wrk exited with {proc.returncode}:\n{out.decode(errors='replace')}")
    return parse(out.decode(errors="replace"))
