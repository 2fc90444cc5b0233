"""WhatsApp webhooks: verification, routing, dedupe and queueing (CONTRACT §7; README "WhatsApp").

* GET: the verify token must equal (constant time) ``VOICE_WHATSAPP_VERIFY_TOKEN`` or a channel's
  ``verifyToken`` on any node (index ``wa-verify:<sha256(token)>`` -> agent, re-checked).
* POST: parsed only to route; the HMAC is over the raw bytes and must verify against every
  applicable secret set (channel ``appSecret`` + ``VOICE_WHATSAPP_APP_SECRET``); with no secret,
  ``VOICE_WHATSAPP_REQUIRE_SIGNATURE`` refuses, else a loud warning and a counter. Nothing from a
  refused body reaches an agent, the store or the queue.
* Delivery: dedupe by id in the store; the agent's node holds the conversation
  (:mod:`server.services.whatsapp_sessions`), other nodes relay on ``wa:node:<node_id>``; messages
  for a number with no agent online are queued (bounded, TTL) until it registers again.
* A watcher claims a new channel's indexes and ``wa-owner:<number>`` every half second; a number
  last owned by another org cannot be registered until that claim expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from server.core import strictjson
from server.core.whatsapp import (
    InboundMessage,
    Reason,
    WebhookEvent,
    channel_secrets,
    event_from_dict,
    parse_signature,
    parse_webhook,
    phone_number_ids,
    safe_challenge,
    seen_key,
    token_digest,
    token_matches,
    verify_signature,
)
from server.errors import (
    AgentNotOnline,
    BadRequest,
    RegistrationError,
    SignatureError,
    SignatureRequired,
    StoreUnavailable,
    VerifyTokenInvalid,
)
from server.log import event
from server.services.agents import AgentRegistry
from server.services.calls import CallRouter
from server.services.whatsapp_sessions import Conversations, GraphClient
from server.settings import Settings
from server.store import Store
from server.store.base import AgentRecord, agent_key

log = logging.getLogger("voice.whatsapp")
Clock = Callable[[], float]
DEDUPE_SECONDS = 7 * 86400  # Meta retries a failed delivery for up to 7 days
MAX_NUMBERS = 64  # distinct phone number ids one body may name (each costs a store lookup)
WATCH_SECONDS = 0.5
CLOSE_SECONDS = 2.0
UNSIGNED_WARNING = (
    "accepting an UNSIGNED WhatsApp webhook: no app secret is configured for this number, so anyone "
    "who finds your endpoint URL can inject fake messages. Set the channel's appSecret or "
    "VOICE_WHATSAPP_APP_SECRET, and VOICE_WHATSAPP_REQUIRE_SIGNATURE=1"
)


def _stop_if_cancelled() -> None:
    """Some clients turn a cancellation mid-connect into their own error; keep the cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _channel(record: AgentRecord | None, pnid: str) -> Mapping[str, Any] | None:
    return record.channels.get(f"whatsapp:{pnid}") if record is not None else None


class WhatsAppService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: AgentRegistry,
        calls: CallRouter,
        clock: Clock = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self._http = http or httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        self._own_http = http is None
        graph = self.graph = GraphClient(settings.whatsapp_graph_url, self._http)
        self.conversations = Conversations(
            registry, calls, graph, settings.whatsapp_session_idle_seconds, clock
        )
        self.unsigned_accepted = 0  # webhooks let in without a signature (until metrics exist)
        self.refused: Counter[str] = Counter()  # refusals by reason
        self.duplicates = 0
        self._known: dict[tuple[str, str], str] = {}  # (agent key, number) -> verify-token digest
        self._refreshed = 0.0
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    @property
    def _bus(self) -> str:
        return "wa:node:" + self.settings.node_id

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch(), name="wa-watch"),
            asyncio.create_task(self._listen(), name="wa-bus"),
            asyncio.create_task(self._reap(), name="wa-reap"),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Bounded: a Redis pub/sub read cancelled right after subscribing can swallow the cancel.
        _, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_SECONDS)
        if stuck:
            log.warning(
                "whatsapp tasks did not stop in %ss: %s", CLOSE_SECONDS, [t.get_name() for t in stuck]
            )
        await self.conversations.aclose()
        if self._own_http:
            await self._http.aclose()

    # -- GET: Meta's subscription check ------------------------------------------------------
    async def verify_subscription(self, mode: str | None, token: str | None, challenge: str | None) -> str:
        if mode != "subscribe" or not token:
            raise VerifyTokenInvalid("hub.mode must be 'subscribe' with a hub.verify_token")
        echo = safe_challenge(challenge)
        if echo is None:
            raise BadRequest("hub.challenge must be 1 to 256 letters, digits, '.', '_' or '-'")
        local = [
            str(ch.get("verifyToken") or "")
            for record in self.registry.local_agents()
            for ch in record.channels.values()
            if ch.get("type") == "whatsapp"
        ]
        if token_matches(token, [self.settings.whatsapp_verify_token, *local]):
            return echo
        holder = await self.store.lookup_name("wa-verify:" + token_digest(token))
        if holder is not None:
            org_id, _, agent_id = holder.partition("/")
            with contextlib.suppress(AgentNotOnline):
                record = await self.registry.find(org_id, agent_id)
                remote = [str(ch.get("verifyToken") or "") for ch in record.channels.values()]
                if token_matches(token, remote):
                    return echo
        event(log, "whatsapp subscription check refused: unknown verify token", logging.WARNING)
        raise VerifyTokenInvalid("hub.verify_token does not match any registered WhatsApp channel")

    # -- POST: a webhook ---------------------------------------------------------------------
    async def receive(self, body: bytes, signature: str | None) -> int:
        """Verify and route one webhook body; how many new events it carried. Raises to refuse."""
        try:
            payload: Any = strictjson.loads(body)
        except ValueError:
            payload = None
        numbers = phone_number_ids(payload)
        if len(numbers) > MAX_NUMBERS:
            raise BadRequest(f"a webhook may name at most {MAX_NUMBERS} phone numbers")
        server = self.settings.whatsapp_app_secrets
        if server and not isinstance(parse_signature(signature), bytes):
            # A server-wide secret applies to every number, and this header cannot be a
            # signature: refused before any store lookup.
            self._verify(body, signature, server, numbers)
        # One lookup per number, each checked as soon as its secrets are known: a forged or
        # missing signature costs one store lookup, not one per number the body names.
        owners: dict[str, AgentRecord | None] = {}
        unsigned = not numbers and not server
        for pnid in numbers:
            owners[pnid] = await self.registry.find_channel("whatsapp", pnid)
            secrets = channel_secrets(_channel(owners[pnid], pnid)) + server
            if secrets:
                self._verify(body, signature, secrets, numbers)
            else:
                unsigned = True
        if not numbers and server:
            self._verify(body, signature, server, numbers)
        if unsigned:
            self._no_secret(numbers)
        if payload is None:
            event(
                log,
                "whatsapp webhook is not JSON (signature ok); answered 200",
                logging.ERROR,
                bytes=len(body),
            )
            return 0
        accepted = 0
        for ev in parse_webhook(payload):
            accepted += await self._accept(ev, owners.get(ev.phone_number_id))
        return accepted

    def _verify(
        self, body: bytes, signature: str | None, secrets: tuple[str, ...], numbers: list[str]
    ) -> None:
        verdict = verify_signature(body, signature, secrets)
        if verdict.ok:
            return
        self.refused[verdict.reason.value] += 1
        why = verdict.reason.value + (f" ({verdict.detail})" if verdict.detail else "")
        event(
            log,
            f"whatsapp webhook refused: X-Hub-Signature-256 {why}",
            logging.WARNING,
            reason=verdict.reason.value,
            phone_number_ids=numbers,
            secrets_tried=len(secrets),
        )
        raise SignatureError(f"X-Hub-Signature-256 did not verify: {why}")

    def _no_secret(self, numbers: list[str]) -> None:
        """A number no secret applies to: refused while signatures are required, else accepted
        with a warning (and counted)."""
        if self.settings.whatsapp_require_signature:
            self.refused[Reason.NO_SECRET.value] += 1
            event(
                log,
                "whatsapp webhook refused: no app secret known for this number and signatures are required",
                logging.WARNING,
                phone_number_ids=numbers,
            )
            raise SignatureRequired(
                "No app secret is known for this phone number (is its agent online?) and "
                "VOICE_WHATSAPP_REQUIRE_SIGNATURE is on"
            )
        self.unsigned_accepted += 1
        event(
            log,
            UNSIGNED_WARNING,
            logging.WARNING,
            phone_number_ids=numbers,
            unsigned_total=self.unsigned_accepted,
        )

    async def _accept(self, ev: WebhookEvent, owner: AgentRecord | None) -> int:
        if not await self.store.first_time(seen_key(ev), DEDUPE_SECONDS):
            self.duplicates += 1
            return 0
        if owner is None:
            await self._park(ev)
        else:
            await self._deliver(owner, ev)
        return 1

    async def _deliver(self, owner: AgentRecord, ev: WebhookEvent) -> None:
        """To the owner's node: here directly, elsewhere over the bus; parked if nobody takes it."""
        if owner.node_id == self.settings.node_id:
            if not await self._hand(owner.org_id, owner.agent_id, ev):
                await self._park(ev)
            return
        message = json.dumps({"org_id": owner.org_id, "agent_id": owner.agent_id, "event": ev.to_dict()})
        if await self.store.publish("wa:node:" + owner.node_id, message) == 0:
            await self._park(ev)

    async def _hand(self, org_id: str, agent_id: str, ev: WebhookEvent) -> bool:
        if isinstance(ev, InboundMessage):
            return await self.conversations.message(org_id, agent_id, ev)
        return await self.conversations.status(org_id, agent_id, ev)

    async def _park(self, ev: WebhookEvent) -> None:
        """Keep a message for an offline number; it goes to the next agent that registers it."""
        if not isinstance(ev, InboundMessage):
            event(log, "whatsapp status dropped: no agent online", status=ev.status)
            return
        owner = await self.store.lookup_name("wa-owner:" + ev.phone_number_id) or ""
        item = json.dumps({"owner": owner, "event": ev.to_dict()})
        settings = self.settings
        await self.store.append(
            "wa:q:" + ev.phone_number_id, item, settings.whatsapp_queue_max, settings.whatsapp_queue_ttl
        )
        event(log, "whatsapp message queued: no agent online", phone_number_id=ev.phone_number_id)
        # An agent may have taken the number while we queued: have its node drain now.
        record = await self.registry.find_channel("whatsapp", ev.phone_number_id)
        if record is not None:
            if record.node_id == self.settings.node_id:
                await self.drain(record, ev.phone_number_id)
            else:
                await self.store.publish(
                    "wa:node:" + record.node_id, json.dumps({"drain": ev.phone_number_id})
                )

    async def drain(self, record: AgentRecord, pnid: str) -> int:
        """Deliver what was queued for ``pnid`` to ``record``'s agent (on this node)."""
        items = await self.store.pop_list("wa:q:" + pnid)
        me = agent_key(record.org_id, record.agent_id)
        delivered = 0
        for index, raw in enumerate(items):
            item = json.loads(raw)
            if item["owner"] not in ("", me):  # queued while another agent held the number
                event(log, "whatsapp queued message dropped: the number changed hands", phone_number_id=pnid)
                continue
            if not await self._hand(record.org_id, record.agent_id, event_from_dict(item["event"])):
                for rest in items[index:]:  # the agent left again: keep the rest
                    await self.store.append(
                        "wa:q:" + pnid,
                        rest,
                        self.settings.whatsapp_queue_max,
                        self.settings.whatsapp_queue_ttl,
                    )
                break
            delivered += 1
        return delivered

    # -- hooks and loops ---------------------------------------------------------------------
    async def agent_online(self, record: AgentRecord) -> None:
        self._wake.set()

    async def agent_offline(self, record: AgentRecord) -> None:
        await self.conversations.agent_offline(record.org_id, record.agent_id)
        self._wake.set()

    async def sync(self) -> None:
        """Claim indexes for this node's WhatsApp channels, drain new ones, release gone ones."""
        current: dict[tuple[str, str], tuple[AgentRecord, str]] = {}
        for record in self.registry.local_agents():
            for ch in record.channels.values():
                if ch.get("type") == "whatsapp" and ch.get("ref"):
                    verify = ch.get("verifyToken")
                    digest = token_digest(verify) if isinstance(verify, str) and verify else ""
                    current[(agent_key(record.org_id, record.agent_id), str(ch["ref"]))] = (record, digest)
        ttl = self.settings.agent_heartbeat_ttl
        for pair, digest in list(self._known.items()):
            if pair not in current or current[pair][1] != digest:
                del self._known[pair]
                if digest:
                    await self.store.release_name("wa-verify:" + digest, pair[0])
        refresh = self._clock() - self._refreshed >= ttl / 3
        if refresh:
            self._refreshed = self._clock()
        for pair, (record, digest) in current.items():
            new = pair not in self._known
            if not (new or refresh):
                continue
            if digest:
                await self.store.claim_name("wa-verify:" + digest, pair[0], ttl)
            if new:
                await self._claim_owner(pair[1], pair[0])
                await self.drain(record, pair[1])
                self._known[pair] = digest  # only now: a failure above is retried on the next tick

    async def guard_channel(self, record: AgentRecord, kind: str, ref: str | None) -> None:
        """A number last owned by another org's agent stays that org's for
        ``VOICE_WHATSAPP_QUEUE_TTL``: otherwise, while its agent is offline, anyone could register
        the number and (with a server-wide app secret) receive its webhooks."""
        if kind != "whatsapp" or not ref:
            return
        owner = await self.store.lookup_name("wa-owner:" + ref)
        if owner is not None and owner.partition("/")[0] != record.org_id:
            raise RegistrationError(f"WhatsApp number {ref!r} belongs to another organisation")

    async def _claim_owner(self, pnid: str, key: str) -> None:
        name, ttl = "wa-owner:" + pnid, self.settings.whatsapp_queue_ttl
        holder = await self.store.claim_name(name, key, ttl)
        if holder is not None:  # the number changed hands: the new holder is the owner now
            await self.store.release_name(name, holder)
            await self.store.claim_name(name, key, ttl)

    async def _watch(self) -> None:
        while True:
            # asyncio.timeout: 3.11's wait_for can swallow a cancel racing the event being set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except StoreUnavailable as exc:  # reported once by the node's presence beat
                log.debug("whatsapp channel sync lost the store (%s); retrying", exc.detail)
            except Exception:
                _stop_if_cancelled()
                log.exception("whatsapp channel sync failed; retrying")

    async def _listen(self) -> None:
        """Webhooks relayed from other nodes for agents on this one."""
        while True:
            try:
                async for raw in self.store.subscribe(self._bus):
                    await self._relayed(json.loads(raw))
            except StoreUnavailable as exc:  # reported once by the node's presence beat
                log.debug("whatsapp bus listener lost the store (%s); resubscribing", exc.detail)
            except Exception:
                _stop_if_cancelled()
                log.exception("whatsapp bus listener failed; resubscribing")
            await asyncio.sleep(1.0)

    async def _relayed(self, message: Mapping[str, Any]) -> None:
        if "drain" in message:
            self._wake.set()
            pnid = str(message["drain"])
            record = await self.registry.find_channel("whatsapp", pnid)
            if record is not None and record.node_id == self.settings.node_id:
                await self.drain(record, pnid)
            return
        ev = event_from_dict(message["event"])
        if not await self._hand(str(message["org_id"]), str(message["agent_id"]), ev):
            await self._park(ev)

    async def _reap(self) -> None:
        interval = min(30.0, self.settings.whatsapp_session_idle_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.conversations.sweep()
            except Exception:
                _stop_if_cancelled()
                log.exception("whatsapp session sweep failed")
