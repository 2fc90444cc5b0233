"""Live calls on this node, by call id, so agent commands (``bot.reply``, ``call.hangup``,
``history.*``) reach the session they name (CONTRACT §6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class CallHandler(Protocol):
    """A live session (WebRTC, chat, WhatsApp) that takes commands from its agent."""

    call_id: str
    org_id: str
    agent_id: str

    async def on_agent_command(self, frame: Mapping[str, Any]) -> None: ...


class CallRouter:
    def __init__(self) -> None:
        self._calls: dict[str, CallHandler] = {}

    def add(self, handler: CallHandler) -> None:
        self._calls[handler.call_id] = handler

    def remove(self, handler: CallHandler) -> None:
        if self._calls.get(handler.call_id) is handler:
            del self._calls[handler.call_id]

    def get(self, call_id: str, org_id: str) -> CallHandler | None:
        """The call, if it is live here and belongs to ``org_id`` (no cross-org commands)."""
        handler = self._calls.get(call_id)
        return handler if handler is not None and handler.org_id == org_id else None

    def __len__(self) -> int:
        return len(self._calls)

    def all(self) -> list[CallHandler]:
        return list(self._calls.values())
