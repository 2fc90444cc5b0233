"""Everything one server process holds, opened and closed together by the app's lifespan."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.core.tokens import TokenCodec
from server.services.agents import AgentRegistry, RegistrySettings
from server.services.authority import Authority
from server.services.calls import CallRouter
from server.services.keys import KeyService
from server.services.sessions import SessionLimits, SessionManager
from server.settings import Settings
from server.store import Store, open_store
from server.store.base import AgentRecord


@dataclass
class Node:
    settings: Settings
    store: Store
    keys: KeyService
    authority: Authority
    registry: AgentRegistry
    calls: CallRouter
    sessions: SessionManager
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    connections: set[Any] = field(default_factory=set)  # live /client sockets
    on_agent_offline: list[Callable[[AgentRecord], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    async def open(cls, settings: Settings, store: Store | None = None) -> Node:
        store = store if store is not None else open_store(settings.store_url)
        keys = KeyService(store)
        await keys.bootstrap(settings.bootstrap_keys)
        registry = AgentRegistry(
            store, RegistrySettings(settings.node_id, settings.public_url, settings.agent_heartbeat_ttl)
        )
        await registry.start()
        authority = Authority(TokenCodec(settings.token_secrets), store, settings.token_ttl)
        calls = CallRouter()
        limits = SessionLimits(
            settings.max_sessions,
            settings.max_sessions_per_org,
            settings.session_max_seconds,
            settings.session_idle_seconds,
        )
        sessions = SessionManager(registry, calls, limits)
        node = cls(settings, store, keys, authority, registry, calls, sessions)
        node.on_agent_offline.append(sessions.agent_offline)
        return node

    async def aclose(self) -> None:
        await self.sessions.shutdown(grace=0)
        await self.registry.stop()
        await self.store.aclose()
