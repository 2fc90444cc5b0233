"""The processes of one chaos scenario and the faults done to them.

``redis``: N nodes on one redis-server (no persistence: a restart comes back empty, as a crashed
cache does). ``sentinel``: N nodes on ``redis+sentinel://`` (a master, two replicas, three
Sentinels with quorum 2). Every process is a real one started by ``tests/support/procs.py``, on
127.0.0.1 and free ports. A restarted node keeps its ``VOICE_NODE_ID`` and gets a new port, as a
new pod would; a restarted redis-server keeps its port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from scripts.chaos_lib.ledger import Fault, Ledger
from tests.support.procs import (
    RedisProcess,
    SentinelGroup,
    ServerProcess,
    start_redis,
    start_sentinel_group,
    start_server,
)

KEY = "sk_test_chaos_0123456789abcdef0123"
TOPOLOGIES = ("redis", "sentinel")


@dataclass
class Timing:
    pause: float = 2.0  # how long a SIGSTOPped redis-server stays stopped
    down: float = 1.0  # how long a killed redis-server or node stays dead before its restart


class Rig:
    def __init__(self, topology: str, nodes: int, heartbeat_ttl: float) -> None:
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r} (one of {', '.join(TOPOLOGIES)})")
        self.topology = topology
        self.heartbeat_ttl = heartbeat_ttl
        self.redis: RedisProcess | None = None
        self.group: SentinelGroup | None = None
        if topology == "redis":
            self.redis = start_redis()
        else:
            self.group = start_sentinel_group(replicas=2, sentinels=3, quorum=2)
        self.names = [f"chaos-{chr(ord('a') + i)}" for i in range(nodes)]
        self.nodes: list[ServerProcess] = []
        self.retired: list[ServerProcess] = []  # killed nodes, for their logs
        self.killed_nodes = 0
        try:
            self.nodes = [start_server(self.env(name)) for name in self.names]
        except BaseException:
            self.stop()
            raise

    @property
    def store_url(self) -> str:
        return self.redis.url if self.redis is not None else self.group.url  # type: ignore[union-attr]

    def env(self, name: str) -> dict[str, str]:
        return {
            "VOICE_TOKEN_SECRET": "chaos-secret-0123456789abcdef0123456789",
            "VOICE_STORE_URL": self.store_url,
            "VOICE_API_KEYS": f"chaos:{KEY}",
            "VOICE_NODE_ID": name,
            "VOICE_RATE_LIMIT_KEY": "0",
            "VOICE_TOKEN_TTL": "1800",  # the final replay reaches the store for every token
            "VOICE_MAX_SESSIONS": "100000",
            "VOICE_MAX_SESSIONS_PER_ORG": "100000",
            "VOICE_AGENT_HEARTBEAT_TTL": str(self.heartbeat_ttl),
            "VOICE_LOG_LEVEL": "WARNING",
        }

    def live_nodes(self) -> list[ServerProcess]:
        return [node for node in self.nodes if node.proc.poll() is None]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.group is not None:
            self.group.stop()

    # Faults. Each runs in a thread (they wait on processes) and fills in a Fault's times.

    def redis_pause(self, ledger: Ledger, timing: Timing) -> Fault:
        """SIGSTOP the redis-server (connections stay open, nothing answers), then SIGCONT; on
        Sentinel, the master."""
        target = self._master()
        fault = Fault(f"redis SIGSTOP {timing.pause:g} s", ledger.now())
        os.kill(target.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(timing.pause)
        finally:
            os.kill(target.proc.pid, signal.SIGCONT)
        fault.restored = ledger.now()
        if self.group is not None:  # longer than down-after-milliseconds: Sentinel may fail over
            fault.note = f"master {target.port} -> {self.group.master_port()}"
        return fault

    def redis_restart(self, ledger: Ledger, timing: Timing) -> Fault:
        """SIGKILL the redis-server, then start a new one, empty, on the same port."""
        if self.redis is None:
            raise ValueError("redis-restart needs the redis topology (sentinel has master-crash)")
        fault = Fault(f"redis SIGKILL, restart after {timing.down:g} s (empty)", ledger.now())
        self.redis.proc.kill()
        self.redis.proc.wait(5)
        time.sleep(timing.down)
        self.redis = start_redis(self.redis.port, self.redis.extra, self.redis.workdir)
        fault.restored = ledger.now()
        return fault

    def node_kill(self, ledger: Ledger, timing: Timing) -> Fault:
        """SIGKILL one node (its SDK sockets and sessions drop), restart it under the same id."""
        index = 1 + self.killed_nodes % max(1, len(self.nodes) - 1) if len(self.nodes) > 1 else 0
        self.killed_nodes += 1
        name = self.names[index]
        fault = Fault(f"node {name} SIGKILL, restart after {timing.down:g} s", ledger.now())
        old = self.nodes[index]
        old.kill()
        self.retired.append(old)
        time.sleep(timing.down)
        self.nodes[index] = start_server(self.env(name))
        fault.restored = ledger.now()
        return fault

    def sentinel_failover(self, ledger: Ledger, timing: Timing) -> Fault:
        """``SENTINEL FAILOVER``: a replica is promoted while the old master is alive."""
        group = self._group("failover")
        old = group.master_port()
        if old is None:
            raise RuntimeError("no Sentinel reports a master")
        fault = Fault("Sentinel failover (SENTINEL FAILOVER)", ledger.now())
        group.failover()
        new = group.wait_for_master_other_than(old, 30.0)
        fault.restored = ledger.now()
        fault.note = f"master {old} -> {new}"
        return fault

    def master_crash(self, ledger: Ledger, timing: Timing) -> Fault:
        """SIGKILL the master; Sentinel promotes a replica; the old one comes back as a replica."""
        group = self._group("master-crash")
        fault = Fault("master SIGKILL, Sentinel promotes a replica", ledger.now())
        old = group.crash_master()
        new = group.wait_for_master_other_than(old, 30.0)
        fault.restored = ledger.now()
        fault.note = f"master {old} -> {new}"
        dead = next(p for p in (group.master, *group.replicas) if p.port == old)
        back = start_redis(old, ["--replicaof", "127.0.0.1", str(new)], dead.workdir)
        if group.master is dead:
            group.master = back
        else:
            group.replicas[group.replicas.index(dead)] = back
        return fault

    def _group(self, fault: str) -> SentinelGroup:
        if self.group is None:
            raise ValueError(f"{fault} needs the sentinel topology")
        return self.group

    def _master(self) -> RedisProcess:
        if self.redis is not None:
            return self.redis
        group = self._group("redis-pause")
        port = group.master_port()
        return next(p for p in (group.master, *group.replicas) if p.port == port)


FaultAction = Callable[[Rig, Ledger, Timing], Fault]
FAULTS: dict[str, FaultAction] = {
    "redis-pause": Rig.redis_pause,
    "redis-restart": Rig.redis_restart,
    "node-kill": Rig.node_kill,
    "failover": Rig.sentinel_failover,
    "master-crash": Rig.master_crash,
}
DEFAULT_FAULTS = {
    "redis": ("redis-pause", "redis-restart", "node-kill"),
    # A SIGSTOP longer than down-after-milliseconds (1 s): Sentinel fails over, and the old master
    # wakes up still believing it is the master until a Sentinel reconfigures it.
    "sentinel": ("failover", "redis-pause", "master-crash", "node-kill"),
}


async def inject(rig: Rig, name: str, ledger: Ledger, timing: Timing) -> Fault:
    return await asyncio.to_thread(FAULTS[name], rig, ledger, timing)
