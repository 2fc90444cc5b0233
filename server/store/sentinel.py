"""A fence around Sentinel failovers, so a consumed token can never be consumed again.

After a failover the old master keeps accepting writes until a Sentinel reconfigures it (about
10 s on Redis 7.0 after a ``SENTINEL FAILOVER``), and redis-py asks the Sentinels for the master
only when it opens a connection. A token id deleted on the old master in that window is still
on the new master, so the token could open a second session.

So every Sentinel is watched: from the moment the failover leader picks the replica to promote
(``+selected-slave``, published just before it sends ``REPLICAOF NO ONE``), or from
``+promoted-slave`` / ``+switch-master``, token operations for our service fail closed (503
``store_unavailable``) and pooled connections are dropped, until the client's own master lookup
returns the new master. An aborted failover, or ``MAX_FENCE_SECONDS``, lifts the fence. A crash
failover shows as the same few seconds of 503s it would show anyway. What remains is the
network race between the Sentinel's announcement and a ``DEL`` already on its way to the old
master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool

CLOSE_SECONDS = 2.0  # the most a watch waits to close its Sentinel connection

log = logging.getLogger("voice.store")
PROMOTIONS = ("+selected-slave", "+promoted-slave", "+switch-master")
ABORTS = ("-failover-abort-not-elected", "-failover-abort-no-good-slave", "-failover-abort-slave-timeout")
POLL_SECONDS = 0.2
MAX_FENCE_SECONDS = 60.0


def promoted(service: str, channel: str, data: str) -> tuple[str, int] | None:
    """The new master's address if the event is a promotion in ``service``, else None."""
    parts = data.split()
    if channel == "+switch-master" and len(parts) == 5 and parts[0] == service:
        return parts[3], int(parts[4])
    # "+selected-slave" / "+promoted-slave": "slave <ip:port> <ip> <port> @ <service> <old ip> <old port>"
    if channel in PROMOTIONS and len(parts) == 8 and parts[4] == "@" and parts[5] == service:
        return parts[2], int(parts[3])
    return None


def aborted(service: str, channel: str, data: str) -> bool:
    """An abort names the master: "master <service> <ip> <port>"."""
    parts = data.split()
    return channel in ABORTS and len(parts) >= 2 and parts[1] == service


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # Sentinel clients send bytes


class FailoverFence:
    def __init__(
        self, client: Redis, sentinels: list[Redis], service: str, drop: Callable[[], None] | None = None
    ) -> None:
        self._client = client
        self._drop = drop  # closes connections the pool does not own (the auto-pipeline's)
        self._sentinels = sentinels
        self._service = service
        self._target: tuple[str, int] | None = None  # the promoted master we are waiting for
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def fenced(self) -> bool:
        return self._target is not None

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(s), name="sentinel-watch") for s in self._sentinels]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a watch stuck closing a dead connection must not hold up shutdown
            await asyncio.wait(self._tasks, timeout=CLOSE_SECONDS)

    async def _listen(self, sentinel: Redis) -> None:
        delay = 0.1
        while True:
            pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*PROMOTIONS, *ABORTS)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        channel, data = _text(message["channel"]), _text(message["data"])
                        address = promoted(self._service, channel, data)
                        if address is not None:
                            await self._trip(address)
                        elif aborted(self._service, channel, data) and self.fenced:
                            log.warning(
                                "sentinel: failover of %s aborted; token operations resume", self._service
                            )
                            self._target = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("sentinel watch lost (%s); retrying", type(exc).__name__)
            finally:
                # Bounded, and on cancellation too: closing a pubsub on a paused or failed-over
                # Sentinel could wait for ever, and the cancelled watch with it (a test loop's
                # teardown hung 120 s in CI).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        cast(Any, pubsub).aclose(), CLOSE_SECONDS
                    )  # untyped before redis-py 8.2
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _trip(self, address: tuple[str, int]) -> None:
        if self._target == address:
            return
        first = self._target is None
        self._target = address
        log.warning("sentinel: %s promoted %s:%s; token operations paused", self._service, *address)
        await self._drop_connections()
        if first:
            self._tasks.append(asyncio.create_task(self._until_switched(), name="sentinel-switch"))

    async def _until_switched(self) -> None:
        """Poll the client's own master lookup until it names the promoted master."""
        pool = self._client.connection_pool
        deadline = asyncio.get_running_loop().time() + MAX_FENCE_SECONDS
        while self._target is not None:
            if asyncio.get_running_loop().time() > deadline:
                log.error(
                    "sentinel: %s did not switch within %.0fs; token operations resume",
                    self._service,
                    MAX_FENCE_SECONDS,
                )
                self._target = None
                return
            with contextlib.suppress(Exception):
                if isinstance(pool, SentinelConnectionPool):
                    current = await pool.get_master_address()  # type: ignore[no-untyped-call]
                    if tuple(current) == self._target:
                        await self._drop_connections()
                        log.warning(
                            "sentinel: %s now on %s:%s; token operations resume", self._service, *current
                        )
                        self._target = None
                        return
            await asyncio.sleep(POLL_SECONDS)

    async def _drop_connections(self) -> None:
        if self._drop is not None:
            self._drop()
        with contextlib.suppress(Exception):
            await self._client.connection_pool.disconnect(inuse_connections=True)
