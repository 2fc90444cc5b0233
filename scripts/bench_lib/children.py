"""Every process the bench starts, and how they all end.

Each child runs in its own session (so a Ctrl-C in the terminal reaches only the bench, which then
stops the children in order) and is ended through its own process group: terminate, wait, kill.
``Children.stop_all`` runs from a ``finally`` and from ``atexit``; SIGTERM and SIGHUP are turned
into ``SystemExit`` so those paths run on them too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_termination() -> None:
    """Make SIGTERM/SIGHUP unwind the stack (running ``finally`` blocks) like Ctrl-C does."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)


class ChildFailed(RuntimeError):
    """A child exited or never became ready; the message carries the tail of its log."""


class Children:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        atexit.register(self.stop_all)

    def start(
        self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log_path = self.log_path(name)
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                list(args),
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append((name, proc))
        return proc

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_path(name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, name: str, proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
        """Until ``port`` accepts connections; a child that exits first fails with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ChildFailed(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
            time.sleep(0.05)
        raise ChildFailed(
            f"{name} not listening on {LOOPBACK}:{port} after {timeout:g}s:\n{self.log_tail(name)}"
        )

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            # The child leads its own process group (start_new_session): this reaches the
            # workers a server may have forked, and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        else:
            # The leader is gone; any worker left in its group still goes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc)
