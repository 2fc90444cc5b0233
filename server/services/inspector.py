"""What the inspection API answers, folded from the journal (services/journal.py).

The journal is the one source: the token ledger is its ``mint.allowed`` entries, each marked
consumed by the ``consume.allowed`` naming its ``jti`` and expired once the (shifted) clock passes
its expiry; the session list is its ``session.start``/``session.end`` entries. Every node folds
the same deployment-wide log, so every node gives the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.services.journal import Entry

MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Page:
    """``after``/``limit`` of a list route: items numbered above ``after``, at most ``limit``."""

    after: int = 0
    limit: int = 100

    def cut(self, items: Sequence[Entry]) -> dict[str, Any]:
        """``{"items", "next_after"}``: ``next_after`` is the last seq given when more follow."""
        kept = [item for item in items if item["seq"] > self.after]
        page = kept[: self.limit]
        more = len(kept) > self.limit
        return {"items": page, "next_after": page[-1]["seq"] if more and page else None}


def journal_matches(entry: Mapping[str, Any], kind: str | None, agent_id: str | None) -> bool:
    """``kind=`` is an exact kind or a prefix ending in "." (``mint.``)."""
    if kind is not None:
        entry_kind = str(entry.get("kind", ""))
        if kind.endswith("."):
            if not entry_kind.startswith(kind):
                return False
        elif entry_kind != kind:
            return False
    if agent_id is not None:
        agents = entry.get("agents")
        if entry.get("agent_id") != agent_id and not (isinstance(agents, list) and agent_id in agents):
            return False
    return True


def fold_tokens(entries: Sequence[tuple[int, Entry]], now: float) -> list[Entry]:
    """One row per mint, newest last (never the token string: the journal does not hold it)."""
    rows: dict[str, Entry] = {}
    for seq, entry in entries:
        kind = entry.get("kind")
        if kind == "mint.allowed":
            rows[str(entry["jti"])] = {
                "seq": seq,
                "jti": entry["jti"],
                "org": entry.get("org"),
                "agents": entry.get("agents", []),
                "channel": entry.get("channel"),
                "state": "issued",
                "minted_at": entry.get("at"),
                "expires_at": entry.get("expires_at"),
                "consumed_at": None,
                "consumed_by": None,
                "node": entry.get("node"),
            }
        elif kind == "consume.allowed":
            row = rows.get(str(entry.get("jti")))
            if row is not None:
                row["state"] = "consumed"
                row["consumed_at"] = entry.get("at")
                row["consumed_by"] = entry.get("session_id")
    for row in rows.values():
        expires_at = row["expires_at"]
        if row["state"] == "issued" and isinstance(expires_at, int | float) and now > expires_at:
            row["state"] = "expired"
    return sorted(rows.values(), key=lambda r: int(r["seq"]))


def token_matches(
    row: Mapping[str, Any], agent_id: str | None, channel: str | None, state: str | None
) -> bool:
    if agent_id is not None and agent_id not in row["agents"]:
        return False
    if channel is not None and row["channel"] != channel:
        return False
    return state is None or row["state"] == state


def fold_sessions(entries: Sequence[tuple[int, Entry]]) -> dict[str, Entry]:
    """Sessions by call id, in the order they started."""
    sessions: dict[str, Entry] = {}
    for seq, entry in entries:
        kind = entry.get("kind")
        call_id = str(entry.get("call_id"))
        if kind == "session.start":
            sessions[call_id] = {
                "seq": seq,
                "call_id": call_id,
                "transport": entry.get("transport"),
                "agent_id": entry.get("agent_id"),
                "org": entry.get("org"),
                "state": "live",
                "started_at": entry.get("at"),
                "ended_at": None,
                "end_reason": None,
                "node": entry.get("node"),
            }
        elif kind == "session.end" and call_id in sessions:
            session = sessions[call_id]
            session.update(state="ended", ended_at=entry.get("at"), end_reason=entry.get("reason"))
    return sessions


def session_matches(session: Mapping[str, Any], agent_id: str | None, state: str | None) -> bool:
    if agent_id is not None and session["agent_id"] != agent_id:
        return False
    return state is None or session["state"] == state
