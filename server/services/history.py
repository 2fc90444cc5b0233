"""Conversation history of a session, and the SDK's ``history.*`` commands on it.

A chat opened with ``thread=<id>`` keeps its messages in the shared store under a key scoped
by org, agent and thread, so a reconnect with a fresh token (on any node) gets them back as
``chat.history`` (CONTRACT §4). A session without a thread keeps them in memory for its life.

The SDK's ``call.getHistory()``, ``setHistory()``, ``setPromptVars()``, ``addContext()`` and
``setPrompt()`` await ``history.data`` / ``history.updated`` with no timeout (research notes,
pinecall/sdk ``domain/call.ts``), so every ``history.*`` command gets exactly one answer, with
``error`` and ``code`` in it when the command is malformed. Chat and WebRTC share this module:
one message shape (``{role, content, text}``: the SDK reads ``content``, the browser ``text``)
and one validation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.errors import BadRequest
from server.store.base import MessageStore

MAX_MESSAGES = 200  # per thread / session; older ones are dropped first
MAX_MESSAGE_CHARS = 16_000
_THREAD = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
HISTORY_COMMANDS = frozenset(
    {
        "history.get",
        "history.add",
        "history.set",
        "history.clear",
        "history.set_vars",
        "history.add_context",
        "history.set_instructions",
    }
)


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "user" | "assistant" (the SDK's names; the browser shows anything else as the bot)
    text: str

    def to_json(self) -> str:
        return json.dumps({"role": self.role, "text": self.text}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Message | None:
        try:
            data = json.loads(raw)
            return cls(str(data["role"]), str(data["text"]))
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is skipped, never fatal to a reconnect


def valid_thread(thread: str) -> bool:
    """1-128 characters of letters, digits and ``_ . : -`` (it becomes part of a store key)."""
    return bool(_THREAD.fullmatch(thread))  # fullmatch: `$` alone also matches before a final "\n"


def thread_indexes(
    org_id: str, agent_id: str, sealed: bool, client: str, per_agent: int, per_client: int
) -> list[tuple[str, int]]:
    """The indexes a thread is counted in (``StoredHistory``): its agent's, in its namespace,
    and for a browser-chosen thread its client's too."""
    if sealed:
        return [(f"th:{org_id}/{agent_id}/s", per_agent)]
    return [(f"th:{org_id}/{agent_id}/b", per_agent), (f"th:{org_id}/{agent_id}/c/{client}", per_client)]


def thread_key(org_id: str, agent_id: str, thread: str, sealed: bool = True) -> str:
    """Where a thread's messages live. A thread sealed by the backend (``metadata.threadId``)
    and one the browser chose (``&thread=``) never share a key, whatever their ids: a browser
    that passes ``thread=user-42`` cannot read or write the backend's ``user-42`` (issue 15).
    A browser-chosen id is a bearer secret of that browser (the web widget makes a random one):
    possession is access, so per-user threads are for the backend to seal."""
    # Agent slugs and thread ids contain no "/", so the key cannot be read two ways.
    return f"chat:{org_id}/{agent_id}/{thread}" if sealed else f"chat:{org_id}/{agent_id}/b/{thread}"


class History(Protocol):
    async def read(self) -> list[Message]: ...

    async def append(self, messages: Sequence[Message]) -> int:
        """Add at the end; returns how many messages the history now holds."""
        ...

    async def replace(self, messages: Sequence[Message]) -> int: ...


class LocalHistory:
    """One session's messages, in memory (a chat without a thread, a WebRTC call)."""

    def __init__(self, max_items: int = MAX_MESSAGES) -> None:
        self._items: list[Message] = []
        self._max = max_items

    async def read(self) -> list[Message]:
        return list(self._items)

    async def append(self, messages: Sequence[Message]) -> int:
        self._items = [*self._items, *messages][-self._max :]
        return len(self._items)

    async def replace(self, messages: Sequence[Message]) -> int:
        self._items = list(messages)[-self._max :]
        return len(self._items)


class StoredHistory:
    """A thread's messages in the shared store: bounded, expiring ``ttl`` after the last write.

    Every thread is bounded in messages and bytes, and counted in ``indexes`` (name, cap): each
    keeps its ``cap`` most recently written threads, and a thread pushed out of any of them is
    deleted. With one index per agent and one per client, what anonymous browsers can store is
    bounded (README, "Security"): no thread id, however many, grows Redis past the caps."""

    def __init__(
        self,
        store: MessageStore,
        key: str,
        ttl: float,
        max_items: int = MAX_MESSAGES,
        max_bytes: int = 0,
        indexes: Sequence[tuple[str, int]] = (),
    ) -> None:
        self._store = store
        self._key = key
        self._ttl = ttl
        self._max = max_items
        self._max_bytes = max_bytes
        self._indexes = tuple(indexes)

    async def read(self) -> list[Message]:
        found = (Message.from_json(raw) for raw in await self._store.read_list(self._key))
        return [m for m in found if m is not None]

    async def append(self, messages: Sequence[Message]) -> int:
        if not messages:
            return len(await self._store.read_list(self._key))
        count = 0
        for message in messages:
            count = await self._store.append(
                self._key, message.to_json(), self._max, self._ttl, self._max_bytes
            )
        for index, cap in self._indexes:
            for evicted in await self._store.touch_index(index, self._key, cap, self._ttl):
                await self._store.pop_list(evicted)
        return count

    async def replace(self, messages: Sequence[Message]) -> int:
        await self._store.pop_list(self._key)
        return await self.append(list(messages)[-self._max :]) if messages else 0


def parse_messages(raw: object) -> list[Message]:
    """``messages`` of ``history.add`` / ``history.set``: ``[{role, content | text}]``."""
    if not isinstance(raw, list):
        raise BadRequest("'messages' must be a list of {role, content} objects")
    if len(raw) > MAX_MESSAGES:
        raise BadRequest(f"at most {MAX_MESSAGES} messages")
    parsed = []
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise BadRequest(f"messages[{index}] must be an object")
        role, text = item.get("role"), item.get("content", item.get("text"))
        if not isinstance(role, str) or not 0 < len(role) <= 32:
            raise BadRequest(f"messages[{index}].role must be a short string")
        if not isinstance(text, str) or len(text) > MAX_MESSAGE_CHARS:
            raise BadRequest(
                f"messages[{index}] needs 'content' (or 'text'): a string of at most "
                f"{MAX_MESSAGE_CHARS} characters"
            )
        parsed.append(Message(role, text))
    return parsed


def echo_request_id(answer: dict[str, Any], frame: Mapping[str, Any]) -> dict[str, Any]:
    """The answer with the command's ``request_id``: the SDK's requester (kernel/requester.ts)
    matches replies by it first, so concurrent ``history.*`` calls each get their own answer."""
    request_id = frame.get("request_id")
    if isinstance(request_id, str) and 0 < len(request_id) <= 128:
        return {**answer, "request_id": request_id}
    return answer


def _wire(messages: Sequence[Message]) -> list[dict[str, str]]:
    # The SDK reads {role, content}; the browser reads {role, text}: both are sent.
    return [{"role": m.role, "content": m.text, "text": m.text} for m in messages]


@dataclass
class Memory:
    """What the agent's ``history.*`` commands act on for one session."""

    history: History
    prompt_vars: dict[str, str] = field(default_factory=dict)
    context: list[str] = field(default_factory=list)
    instructions: str | None = None

    async def answer(self, frame: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The frames for the agent: exactly one answer, the same on every transport. A
        malformed command is answered too, with ``error`` and ``code`` in the answer itself:
        the SDK's requester (pinecall/sdk kernel/requester.ts) settles the request by its
        ``request_id`` and rejects the app's promise with that ``error`` (REQUEST_REJECTED),
        where a separate ``error`` frame would leave it to time out or resolve as if done."""
        try:
            return [echo_request_id(await self.command(frame), frame)]
        except BadRequest as exc:
            refused: dict[str, Any] = (
                {"event": "history.data", "messages": _wire(await self.history.read())}
                if frame.get("event") == "history.get"
                else {"event": "history.updated", "count": len(await self.history.read())}
            )
            refused |= {"error": exc.detail, "code": exc.frame_code}
            return [echo_request_id(refused, frame)]

    async def command(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one ``history.*`` command (``history.data`` or ``history.updated``).

        ``count`` is the number of messages the history holds after the command, for every
        command (the SDK returns it from each call)."""
        name = frame.get("event")
        if name == "history.get":
            return {"event": "history.data", "messages": _wire(await self.history.read())}
        if name == "history.add":
            count = await self.history.append(parse_messages(frame.get("messages")))
        elif name == "history.set":
            count = await self.history.replace(parse_messages(frame.get("messages")))
        elif name == "history.clear":
            count = await self.history.replace([])
        else:
            self._apply(str(name), frame)
            count = len(await self.history.read())
        return {"event": "history.updated", "count": count}

    def _apply(self, name: str, frame: Mapping[str, Any]) -> None:
        if name == "history.set_vars":
            values = frame.get("vars")
            if not isinstance(values, Mapping) or len(values) > 100:
                raise BadRequest("'vars' must be an object of at most 100 entries")
            self.prompt_vars.update({str(k)[:128]: str(v)[:MAX_MESSAGE_CHARS] for k, v in values.items()})
        elif name == "history.add_context":
            text = frame.get("text")
            if not isinstance(text, str) or len(text) > MAX_MESSAGE_CHARS:
                raise BadRequest(f"'text' must be a string of at most {MAX_MESSAGE_CHARS} characters")
            self.context = [*self.context, text][-MAX_MESSAGES:]
        elif name == "history.set_instructions":
            prompt = frame.get("prompt")
            if not isinstance(prompt, str) or len(prompt) > 4 * MAX_MESSAGE_CHARS:
                raise BadRequest("'prompt' must be a string")
            self.instructions = prompt
        else:
            raise BadRequest(f"unknown history command {name!r}")
