"""The shared store on Redis: every node of a deployment sees the same tokens, keys and agents.

Each key is touched by single-key commands or single-key Lua scripts (shipped as package
resources in ``lua/``), so the same code runs on standalone Redis, Sentinel and Cluster.
Single use is one ``GETDEL`` in a script (exactly one caller gets the value). A token's value is
the run id of the Redis process that wrote it, and a consume accepts only its own process's
tokens: a token a restart restored from RDB or AOF, or a failover carried to a replica, may have
been spent in the writes that were lost, so it is refused (README, "Security"). Any connection
failure becomes :class:`StoreUnavailable` (503): no token is issued or accepted while Redis is
unreachable.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Any, TypeVar, cast

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from server.core.apikeys import ApiKey, KeyKind
from server.core.ratelimit import Verdict, judge, window_ms
from server.errors import StoreUnavailable, VoiceError
from server.store import mints
from server.store.base import FAMILIES, AgentRecord, EventPage, Hit, agent_key
from server.store.pipeline import AutoPipeline
from server.store.sentinel import FailoverFence

log = logging.getLogger("voice.store")
T = TypeVar("T")
Client = Redis | RedisCluster
PREFIX = "vs:"
MAX_IN_FLIGHT = 48
# Every store call answers within this bound, waiting for a slot and redis-py's own retries
# included: a stalled Redis becomes a 503 after STALL_SECONDS, not after timeout x retries.
STALL_SECONDS = 2.0
_DOWN = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, rexc.ReadOnlyError, OSError)
_SCRIPTS = (
    "claim_agent",
    "release_agent",
    "refresh_agent",
    "claim_name",
    "release_name",
    "pop_list",
    "index_members",
    "append_list",
    "touch_index",
    "touch_key",
    "revoke_key",
    "clear_family",
)


def _lua(name: str) -> str:
    return resources.files("server.store").joinpath(f"lua/{name}.lua").read_text()


CONSUME = _lua("consume_token")  # sent as EVAL: a few hundred bytes, no NOSCRIPT to recover from
ISSUE = _lua("issue_token")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _unavailable(exc: Exception) -> VoiceError:
    """What a client error means to the caller: the store is down (503), fail closed."""
    if isinstance(exc, VoiceError):
        return exc
    if isinstance(exc, rexc.ClusterDownError):
        return StoreUnavailable("the token store is unavailable (cluster down)")
    if not isinstance(exc, _DOWN):
        # Anything else the client raises, too: e.g. redis-py's connect racing a pool
        # disconnect during a failover surfaces as an AttributeError.
        log.warning("store client error %s: %s", type(exc).__name__, exc)
    return StoreUnavailable(f"the token store is unavailable ({type(exc).__name__})")


@asynccontextmanager
async def _guard(bound: float | None = STALL_SECONDS) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(bound):
            yield
    except Exception as exc:
        error = _unavailable(exc)
        if error is exc:
            raise
        raise error from exc


class RedisStore:
    """``Store`` on a redis.asyncio client (standalone, Sentinel master or Cluster)."""

    def __init__(
        self,
        client: Client,
        url: str = "redis://",
        bus: Redis | None = None,
        sentinels: Sequence[Redis] = (),
        service: str = "",
    ) -> None:
        self.url = url
        self._redis = client
        self._sentinels = list(sentinels)  # closed with the store
        # The hot path (mint, consume) batches concurrent commands on a connection of its own,
        # and the mints of a batch share one script call; a cluster routes per key.
        self._auto = (
            AutoPipeline(client, check=self._check_fence, hello=[mints.HELLO])
            if isinstance(client, Redis)
            else None
        )
        self._mints = mints.MintBatcher(self._auto, PREFIX + "rl:") if self._auto is not None else None
        # Sentinel: token operations pause from a promotion until the client follows it.
        self._fence = (
            FailoverFence(client, self._sentinels, service, drop=self._auto.drop if self._auto else None)
            if self._sentinels and isinstance(client, Redis)
            else None
        )
        # Pub/sub: on a cluster, PUBLISH is broadcast to every shard, so one plain connection
        # to any node serves; elsewhere the main client does.
        if bus is None and isinstance(client, RedisCluster):
            raise ValueError("a cluster store needs a bus client (a plain connection to one node)")
        self._bus: Redis = bus if bus is not None else client  # type: ignore[assignment]
        # Bounds commands in flight, so a burst queues here instead of exhausting the pool.
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._observe: Callable[[float], None] | None = None
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(_lua(name)) for name in _SCRIPTS
        }

    async def _run(self, command: Awaitable[T]) -> T:
        try:
            async with _guard(), self._slots:
                return await command
        finally:
            if inspect.iscoroutine(command):
                command.close()  # a no-op once awaited; timed out waiting for a slot: never started

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._run(self._scripts[name](keys=keys, args=args))

    # -- tokens ----------------------------------------------------------------------------
    async def issue_token(self, jti: str, ttl: float, hits: Sequence[Hit]) -> Verdict:
        self._check_fence()
        active = [h for h in hits if h.limit.enabled]
        key = PREFIX + "tok:" + jti
        if self._mints is not None:
            # Counted, judged and written in one script call with every concurrent mint's.
            try:
                return await self._mints.issue(key, _ms(ttl), active)
            except Exception as exc:
                raise _unavailable(exc) from exc
        write = ("EVAL", ISSUE, 1, key, _ms(ttl))
        if not active:
            await self._commands(write)
            return Verdict(True, 0)
        # A cluster refuses multi-slot scripts: the counters and the token write travel in one
        # pipeline fanned out to the shards; a refused mint then deletes its token (a second
        # trip on that path only).
        replies = await self._commands(*_counting(active), write)
        verdict = _first_refusal(active, _windows(replies, len(active)))
        if not verdict.allowed:
            await self._commands(("DEL", key))
        return verdict

    async def consume_token(self, jti: str) -> bool:
        self._check_fence()
        (spent,) = await self._commands(("EVAL", CONSUME, 1, PREFIX + "tok:" + jti))
        if spent == -1:
            log.info("refused a token written before the token store restarted or failed over")
        return bool(spent == 1)

    async def hit(self, hits: Sequence[Hit]) -> Verdict:
        active = [h for h in hits if h.limit.enabled]
        if not active:
            return Verdict(True, 0)
        return _first_refusal(active, _windows(await self._commands(*_counting(active)), len(active)))

    def _check_fence(self) -> None:
        if self._fence is not None and self._fence.fenced:
            raise StoreUnavailable("the token store is failing over")

    async def _commands(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Run ``commands`` in one round trip: batched with other requests' on a single node,
        one redis-py pipeline (fanned out to the shards) on a cluster."""
        if self._auto is not None:
            try:
                replies = await self._auto.execute(*commands)
            except Exception as exc:
                raise _unavailable(exc) from exc
            for reply in replies:
                if isinstance(reply, rexc.ResponseError):  # e.g. READONLY during a failover
                    raise StoreUnavailable(f"the token store refused a write ({type(reply).__name__})")
            return replies
        async with _guard(), self._slots, self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            started = time.perf_counter()
            replies = list(await pipe.execute())
            if self._observe is not None:
                self._observe(time.perf_counter() - started)
            return replies

    # -- API keys --------------------------------------------------------------------------
    async def put_key(self, key: ApiKey, digest: str) -> None:
        async with _guard(), self._redis.pipeline(transaction=False) as pipe:
            pipe.set(PREFIX + "key:" + key.key_id, _key_json(key))
            pipe.set(PREFIX + "kd:" + digest, key.key_id)
            pipe.sadd(PREFIX + "keys", key.key_id)
            await pipe.execute()

    async def key_by_digest(self, digest: str) -> ApiKey | None:
        key_id = await self._run(self._redis.get(PREFIX + "kd:" + digest))
        return None if key_id is None else await self._key(str(key_id))

    async def _key(self, key_id: str) -> ApiKey | None:
        raw = await self._run(self._redis.get(PREFIX + "key:" + key_id))
        return None if raw is None else _key_from_json(str(raw))

    async def list_keys(self) -> list[ApiKey]:
        ids = await self._run(self._redis.smembers(PREFIX + "keys"))
        keys = [k for k in [await self._key(str(i)) for i in ids] if k is not None]
        return sorted(keys, key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, at: float) -> ApiKey | None:
        raw = await self._script("revoke_key", [PREFIX + "key:" + key_id], [repr(at)])
        return None if raw is None else _key_from_json(str(raw))

    async def touch_key(self, key_id: str, at: float) -> None:
        # One field, in one script: never a stale copy over a revoke, never a deleted key revived.
        await self._script("touch_key", [PREFIX + "key:" + key_id], [repr(at)])

    # -- agents ----------------------------------------------------------------------------
    async def claim_agent(self, record: AgentRecord, ttl: float, replace: str | None = None) -> str | None:
        key = PREFIX + "ag:" + agent_key(record.org_id, record.agent_id)
        args = [record.owner, record.to_json(), _ms(ttl), replace or ""]
        holder = await self._script("claim_agent", [key], args)
        return cast("str | None", holder or None)

    async def get_agent(self, org_id: str, agent_id: str) -> AgentRecord | None:
        raw = await self._run(self._redis.hget(PREFIX + "ag:" + agent_key(org_id, agent_id), "data"))
        return None if raw is None else AgentRecord.from_json(raw)

    async def release_agent(self, org_id: str, agent_id: str, owner: str) -> None:
        await self._script("release_agent", [PREFIX + "ag:" + agent_key(org_id, agent_id)], [owner])

    async def refresh_agent(self, record: AgentRecord, ttl: float) -> bool:
        key = PREFIX + "ag:" + agent_key(record.org_id, record.agent_id)
        return bool(await self._script("refresh_agent", [key], [record.owner, _ms(ttl)]))

    async def claim_name(self, name: str, value: str, ttl: float) -> str | None:
        holder = await self._script("claim_name", [PREFIX + "ix:" + name], [value, _ms(ttl)])
        return cast("str | None", holder or None)

    async def refresh_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[bool]:
        calls = [(_agent_name(r), (r.owner, _ms(ttl))) for r in records]
        return [bool(reply) for reply in await self._script_batch("refresh_agent", calls)]

    async def claim_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[str | None]:
        calls = [(_agent_name(r), (r.owner, r.to_json(), _ms(ttl), "")) for r in records]
        return [reply or None for reply in await self._script_batch("claim_agent", calls)]

    async def claim_names(self, claims: Sequence[tuple[str, str]], ttl: float) -> list[str | None]:
        calls = [(PREFIX + "ix:" + name, (value, _ms(ttl))) for name, value in claims]
        return [reply or None for reply in await self._script_batch("claim_name", calls)]

    async def _script_batch(self, name: str, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """The script ``name`` once per ``(key, args)``, in order, in one non-transactional
        pipeline on a pooled connection (the token path's stays free): one round trip on a single
        node, one per shard in parallel on a cluster, whose pipelines accept single-key scripts.
        Calls a server has no cached copy for (NOSCRIPT after a restart, a failover or SCRIPT
        FLUSH) go again with the script's text. Any error reply fails the batch (fail closed)."""
        script = self._scripts[name]
        replies = await self._pipeline([("EVALSHA", script.sha, 1, key, *args) for key, args in calls])
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, rexc.NoScriptError)]
        if missing:
            text = script.script
            again = await self._pipeline([("EVAL", text, 1, calls[i][0], *calls[i][1]) for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise _unavailable(reply) from reply
        return replies

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``commands`` in one redis-py pipeline; an error reply comes back as its exception."""
        if not commands:
            return []
        async with self._slots, _guard(), self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

    async def lookup_name(self, name: str) -> str | None:
        return cast("str | None", await self._run(self._redis.get(PREFIX + "ix:" + name)))

    async def release_name(self, name: str, value: str) -> None:
        await self._script("release_name", [PREFIX + "ix:" + name], [value])

    # -- messages --------------------------------------------------------------------------
    async def first_time(self, key: str, ttl: float) -> bool:
        return bool(await self._run(self._redis.set(PREFIX + "seen:" + key, 1, px=_ms(ttl), nx=True)))

    async def append(self, key: str, item: str, max_items: int, ttl: float, max_bytes: int = 0) -> int:
        args = [item, max_items, _ms(ttl), max_bytes]
        return int(await self._script("append_list", [PREFIX + "ls:" + key], args))

    async def touch_index(self, index: str, member: str, cap: int, ttl: float) -> list[str]:
        args = [member, cap, _ms(ttl)]
        return cast("list[str]", await self._script("touch_index", [PREFIX + "lx:" + index], args))

    async def touch_indexes(self, touches: Sequence[tuple[str, str, int]], ttl: float) -> list[list[str]]:
        calls = [(PREFIX + "lx:" + index, (member, cap, _ms(ttl))) for index, member, cap in touches]
        return [list(reply) for reply in await self._script_batch("touch_index", calls)]

    async def index_members(self, index: str, ttl: float) -> list[str]:
        return cast("list[str]", await self._script("index_members", [PREFIX + "lx:" + index], [_ms(ttl)]))

    async def read_list(self, key: str) -> list[str]:
        return cast("list[str]", await self._run(self._redis.lrange(PREFIX + "ls:" + key, 0, -1)))

    async def pop_list(self, key: str) -> list[str]:
        return cast("list[str]", await self._script("pop_list", [PREFIX + "ls:" + key], []))

    # -- event logs ------------------------------------------------------------------------
    # A Redis stream per log. ``XADD key 0-*`` numbers entries 0-1, 0-2, ... (Redis 7: explicit
    # milliseconds, automatic sequence), so the number is given by Redis itself, atomically,
    # whichever node appends; MAXLEN keeps the newest entries, and the last number given survives
    # the trimming.
    async def log_events(self, log: str, entries: Sequence[str], max_items: int, ttl: float) -> list[int]:
        key = PREFIX + "ev:" + log
        adds = [("XADD", key, "MAXLEN", max_items, "0-*", "e", entry) for entry in entries]
        replies = await self._pipeline([*adds, ("PEXPIRE", key, _ms(ttl))])
        for reply in replies:
            if isinstance(reply, Exception):
                raise _unavailable(reply) from reply
        return [_event_number(reply) for reply in replies[: len(adds)]]

    async def read_events(self, log: str, after: int, limit: int) -> EventPage:
        key = PREFIX + "ev:" + log
        commands: list[tuple[Any, ...]] = [
            ("XRANGE", key, "-", "+", "COUNT", 1),
            ("XREVRANGE", key, "+", "-", "COUNT", 1),
        ]
        if limit > 0:
            commands.append(("XRANGE", key, f"0-{after + 1}", "+", "COUNT", limit))
        replies = await self._pipeline(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise _unavailable(reply) from reply
        first, last = replies[0], replies[1]
        entries = [(_event_number(n), fields["e"]) for n, fields in replies[2]] if limit > 0 else []
        return EventPage(
            entries, _event_number(first[0][0]) if first else 0, _event_number(last[0][0]) if last else 0
        )

    # -- inspection ------------------------------------------------------------------------
    async def clear(self, families: Sequence[str]) -> int:
        patterns = [PREFIX + _glob_escape(p) + "*" for family in families for p in FAMILIES[family]]
        if isinstance(self._redis, RedisCluster):
            # A script cannot reach keys of other slots: each shard is scanned and unlinked in
            # batches (not atomic per family there; nothing else writes during a test's reset).
            gone = 0
            for pattern in patterns:
                keys = [k async for k in self._redis.scan_iter(match=pattern, count=1000)]
                for key in keys:
                    gone += int(await self._run(self._redis.unlink(key)))
            return gone
        # One script per family: the whole family goes at once, nothing interleaves with it.
        return sum([int(await self._script("clear_family", [], [p])) for p in patterns])

    async def get_value(self, key: str) -> str | None:
        raw = await self._run(self._redis.get(PREFIX + "v:" + key))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def set_value(self, key: str, value: str | None, ttl: float | None = None) -> None:
        name = PREFIX + "v:" + key
        if value is None:
            await self._run(self._redis.delete(name))
        else:
            await self._run(self._redis.set(name, value, px=_ms(ttl) if ttl is not None else None))

    # -- bus -------------------------------------------------------------------------------
    async def publish(self, channel: str, message: str) -> int:
        return int(await self._run(self._bus.publish(PREFIX + "bus:" + channel, message)))

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        pubsub = self._bus.pubsub(ignore_subscribe_messages=True)
        try:
            async with _guard():
                await pubsub.subscribe(PREFIX + "bus:" + channel)
            while True:
                # A bounded wait: an unbounded get_message has been seen to swallow cancellation.
                async with _guard():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    yield str(message["data"])
        finally:
            await cast(Any, pubsub).aclose()  # untyped before redis-py 8.2, typed since

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._fence is not None:
            await self._fence.start()
        await self._check_eviction_policy()

    async def _check_eviction_policy(self) -> str | None:
        """Warn unless Redis runs with ``maxmemory-policy noeviction`` (README, "Security"):
        an ``allkeys-*`` policy can evict an org's API key for good, a ``volatile-*`` one agents
        and unspent tokens. Managed Redis often refuses ``CONFIG``: that is logged, not fatal."""
        try:
            async with asyncio.timeout(2.0):
                policies = await self._eviction_policies()
        except Exception as exc:  # refused, renamed or unreachable: the server still starts
            log.info(
                "could not read Redis maxmemory-policy (%s); it should be noeviction", type(exc).__name__
            )
            return None
        policy = next((p for p in policies if p != "noeviction"), "noeviction")
        if policy != "noeviction":
            log.warning(
                "Redis maxmemory-policy is %s: under memory pressure Redis may evict API keys, agents "
                "or unspent tokens; set maxmemory-policy noeviction (README, Security)",
                policy,
            )
        return policy

    async def _eviction_policies(self) -> list[str]:
        if isinstance(self._redis, RedisCluster):  # each node has its own configuration
            await self._redis.initialize()  # the node map is loaded lazily
            nodes = self._redis.get_nodes()
            replies = [await self._redis.config_get("maxmemory-policy", target_nodes=node) for node in nodes]
        else:
            replies = [await self._redis.config_get("maxmemory-policy")]
        return [str(reply.get("maxmemory-policy", "")) for reply in replies]

    def observe_round_trips(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        if self._auto is not None:
            self._auto.observe = observe

    async def ping(self) -> float:
        started = time.perf_counter()
        await self._run(self._redis.ping())
        return time.perf_counter() - started

    async def aclose(self) -> None:
        if self._auto is not None:
            await self._auto.aclose()
        await self._redis.aclose()
        if self._bus is not self._redis:
            await self._bus.aclose()
        if self._fence is not None:
            await self._fence.aclose()
        for client in self._sentinels:
            await client.aclose()


def _event_number(stream_id: str) -> int:
    return int(stream_id.partition("-")[2])


def _agent_name(record: AgentRecord) -> str:
    return PREFIX + "ag:" + agent_key(record.org_id, record.agent_id)


def _counting(hits: Sequence[Hit]) -> list[tuple[Any, ...]]:
    """Fixed-window counters without Lua (cluster pipelines refuse scripts): ``INCR``, then
    ``PEXPIRE ... NX`` (Redis >= 7.0) so only a new window gets its expiry, then ``PTTL``.
    A crash between INCR and PEXPIRE is repaired by the next hit's ``NX``."""
    commands: list[tuple[Any, ...]] = []
    for h in hits:
        name = PREFIX + "rl:" + h.key
        commands += [("INCR", name), ("PEXPIRE", name, window_ms(h.limit), "NX"), ("PTTL", name)]
    return commands


def _windows(replies: Sequence[Any], count: int) -> list[tuple[Any, Any]]:
    """(count, ms left) per bucket from the replies of ``_counting``."""
    return [(replies[3 * i], replies[3 * i + 2]) for i in range(count)]


def _first_refusal(hits: Sequence[Hit], results: Sequence[Any]) -> Verdict:
    for h, (count, ttl_ms) in zip(hits, results, strict=True):
        verdict = judge(h.limit, int(count), int(ttl_ms))
        if not verdict.allowed:
            return verdict
    return Verdict(True, 0)


def _key_json(key: ApiKey) -> str:
    return json.dumps(asdict(key))


def _key_from_json(raw: str) -> ApiKey:
    data = json.loads(raw)
    data["kind"] = KeyKind(data["kind"])
    return ApiKey(**data)
