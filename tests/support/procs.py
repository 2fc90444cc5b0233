"""Real processes for tests: a redis-server on a free port and voice-server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RuntimeError(
            "redis-server is not installed: run scripts/test (it installs it) or apt-get install redis-server"
        )
    return found


@dataclass
class RedisProcess:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: str
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_redis(
    port: int | None = None, extra: list[str] | None = None, workdir: str | None = None
) -> RedisProcess:
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="voice-redis-")
    args = [
        redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", workdir,
        "--protected-mode", "no",
        *(extra or []),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc=proc)
    return RedisProcess(port, proc, workdir, list(extra or []))


@dataclass
class ServerProcess:
    """A real ``python -m server serve`` process, started as the README does."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_server(
    env: Mapping[str, str] | None = None, args: list[str] | None = None, ready_path: str = "/healthz"
) -> ServerProcess:
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="voice-server-", suffix=".log")[1])
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOICE_")},
        "VOICE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    command = [sys.executable, "-m", "server", "serve", "--port", str(port), *(args or [])]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(port, proc, log_path, full_env)
    try:
        wait_for_port(port, timeout=20, proc=proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + ready_path, timeout=1).status_code == 200:
                    return server
            time.sleep(0.05)
        raise TimeoutError(f"server not ready on {server.url}")
    except BaseException:
        server.kill()
        raise RuntimeError("server failed to start:\n" + server.log()) from None


@contextlib.contextmanager
def running_server(
    env: Mapping[str, str] | None = None, args: list[str] | None = None
) -> Iterator[ServerProcess]:
    server = start_server(env, args)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisCluster:
    """A 3-master Redis Cluster on free loopback ports, from the same redis-server binary."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(masters: int = 3) -> RedisCluster:
    nodes = []
    for _ in range(masters):
        port = free_port()
        nodes.append(
            start_redis(
                port,
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    "2000",
                    # The bus defaults to port + 10000, which overflows for high free ports.
                    "--cluster-port",
                    str(free_port()),
                ],
            )
        )
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    addresses = [f"127.0.0.1:{n.port}" for n in nodes]
    subprocess.run(
        [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = [
            subprocess.run(
                [cli, "-p", str(n.port), "cluster", "info"], capture_output=True, text=True, timeout=5
            ).stdout
            for n in nodes
        ]
        if all("cluster_state:ok" in s for s in states):
            return RedisCluster(nodes)
        time.sleep(0.1)
    raise TimeoutError("the cluster did not reach cluster_state:ok")


@dataclass
class RedisSentinel:
    """A master, a replica and one Sentinel (quorum 1) watching service ``mymaster``."""

    master: RedisProcess
    replica: RedisProcess
    sentinel: RedisProcess

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/mymaster"

    def stop(self) -> None:
        for proc in (self.sentinel, self.replica, self.master):
            proc.stop()


def start_sentinel() -> RedisSentinel:
    master = start_redis()
    replica = start_redis(extra=["--replicaof", "127.0.0.1", str(master.port)])
    workdir = tempfile.mkdtemp(prefix="voice-sentinel-")
    port = free_port()
    config = Path(workdir) / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        "sentinel failover-timeout mymaster 5000\n"
        "sentinel parallel-syncs mymaster 1\n"
    )
    proc = subprocess.Popen(
        [redis_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port, proc=proc)
    sentinel = RedisProcess(port, proc, workdir)
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the replica has synced and the sentinel knows it
        info = subprocess.run(
            [cli, "-p", str(replica.port), "info", "replication"], capture_output=True, text=True, timeout=5
        ).stdout
        replicas = subprocess.run(
            [cli, "-p", str(port), "sentinel", "replicas", "mymaster"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        if "master_link_status:up" in info and str(replica.port) in replicas:
            return RedisSentinel(master, replica, sentinel)
        time.sleep(0.1)
    raise TimeoutError("sentinel set-up did not settle")


@dataclass
class SentinelGroup:
    """A master, its replicas and several Sentinels watching ``mymaster``, for failover tests.

    ``master`` is the master at start-up; after a failover ask :meth:`master_port`.
    """

    master: RedisProcess
    replicas: list[RedisProcess]
    sentinels: list[RedisProcess]
    service: str = "mymaster"

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers reports it."""
        for sentinel in self.sentinels:
            if sentinel.proc.poll() is not None:
                continue
            out = _cli(sentinel.port, "sentinel", "get-master-addr-by-name", self.service).split()
            if len(out) == 2 and out[1].isdigit():
                return int(out[1])
        return None

    def failover(self) -> None:
        """A coordinated failover (``SENTINEL FAILOVER``): the master is alive and gets demoted."""
        out = _cli(self.sentinels[0].port, "sentinel", "failover", self.service)
        if out.strip() != "OK":
            raise RuntimeError(f"SENTINEL FAILOVER refused: {out.strip()}")

    def crash_master(self) -> int:
        """SIGKILL the current master (no goodbye); returns its port."""
        port = self.master_port()
        for proc in (self.master, *self.replicas):
            if proc.port == port and proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait(5)
                return port
        raise RuntimeError(f"no running redis-server on the master port {port}")

    def wait_for_master_other_than(self, port: int, timeout: float = 30.0) -> int:
        """Poll the Sentinels until they report a master that is not ``port`` and it says so too."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.master_port()
            if current is not None and current != port and _cli(current, "role").startswith("master"):
                return current
            time.sleep(0.05)
        raise TimeoutError(f"no new master for {self.service} within {timeout}s")

    def wait_demoted(self, port: int, timeout: float = 30.0) -> None:
        """Poll until the redis-server on ``port`` is dead or a replica: after ``SENTINEL FAILOVER``
        the old master goes on accepting writes until a Sentinel reconfigures it (Redis 7.0: at
        its next INFO refresh, up to 10 s later)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = any(p.port == port and p.proc.poll() is None for p in (self.master, *self.replicas))
            if not alive or _cli(port, "role").startswith("slave"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"the old master on {port} was not demoted within {timeout}s")

    def stop(self) -> None:
        for proc in (*self.sentinels, *self.replicas, self.master):
            proc.stop()


def _cli(port: int, *args: str) -> str:
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    return subprocess.run([cli, "-p", str(port), *args], capture_output=True, text=True, timeout=5).stdout


def start_sentinel_group(
    replicas: int = 2, sentinels: int = 3, quorum: int = 2, down_after_ms: int = 1000
) -> SentinelGroup:
    """Like :func:`start_sentinel`, with more replicas and Sentinels; returns once every Sentinel
    knows every replica and the other Sentinels, so a failover can start at once."""
    master = start_redis()
    copies = [start_redis(extra=["--replicaof", "127.0.0.1", str(master.port)]) for _ in range(replicas)]
    watchers = []
    for _ in range(sentinels):
        workdir = tempfile.mkdtemp(prefix="voice-sentinel-")
        port = free_port()
        config = Path(workdir) / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} {quorum}\n"
            f"sentinel down-after-milliseconds mymaster {down_after_ms}\n"
            "sentinel failover-timeout mymaster 5000\n"
            "sentinel parallel-syncs mymaster 2\n"
        )
        proc = subprocess.Popen(
            [redis_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(port, proc=proc)
        watchers.append(RedisProcess(port, proc, workdir))
    group = SentinelGroup(master, copies, watchers)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        synced = all("master_link_status:up" in _cli(r.port, "info", "replication") for r in copies)
        known = all(_knows(s.port, replicas, sentinels - 1) for s in watchers)
        if synced and known:
            return group
        time.sleep(0.1)
    group.stop()
    raise TimeoutError("sentinel group set-up did not settle")


def _knows(port: int, replicas: int, others: int) -> bool:
    """A Sentinel sees ``replicas`` replicas and ``others`` other Sentinels of ``mymaster``."""
    fields = _cli(port, "sentinel", "master", "mymaster").split("\n")
    info = dict(zip(fields[::2], fields[1::2], strict=False))
    return info.get("num-slaves") == str(replicas) and info.get("num-other-sentinels") == str(others)
