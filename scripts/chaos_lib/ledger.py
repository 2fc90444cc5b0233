"""Every mint and every consume attempt, with when it started and ended, and the invariants.

A token is *reported consumed* once an attempt on it has answered "ok" (a session opened) or
``token_spent``. From then on no attempt that starts later may open a session: that would be a
consume the store had lost (a ``GETDEL`` on a master that was then replaced, a key that came back).
Two "ok" answers for one token, racing or not, are a double spend. Outcomes are plain strings:
"ok", the refusal's code (``token_spent``, ``store_unavailable``, ``agent_not_online``, ...),
"unreachable" (no TCP connection: the node is down), "lost" (the connection dropped before an
answer: the node died under it), "hung" (no answer within the request timeout), or "http <status>
<code>" / "close <code> <reason>" for anything else.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

SPENT = {"ok", "token_spent"}
# Refusals a fault may cause and that fail closed: no token issued or accepted.
CLEAN = {
    "store_unavailable",
    "agent_not_online",
    "unreachable",
    "lost",
    "token_spent",
    "at_capacity",
    "token_expired",
}


@dataclass
class Attempt:
    node: str
    started: float
    ended: float
    outcome: str


@dataclass
class Token:
    token: str
    agent: str
    minted_at: float
    attempts: list[Attempt] = field(default_factory=list)

    def opened(self) -> int:
        return sum(1 for a in self.attempts if a.outcome == "ok")

    def late_accepts(self) -> list[Attempt]:
        """ "ok" answers to attempts that started after another attempt reported the token consumed."""
        late = []
        for attempt in self.attempts:
            if attempt.outcome != "ok":
                continue
            if any(
                o is not attempt and o.outcome in SPENT and o.ended < attempt.started for o in self.attempts
            ):
                late.append(attempt)
        return late


@dataclass
class Fault:
    name: str
    injected: float
    restored: float | None = None  # when the fault's own action was undone (restart, SIGCONT, promotion)
    recovered: float | None = None  # restored + the time until the last failure caused by it
    failures: int = 0
    note: str = ""


class Ledger:
    def __init__(self, clock: float | None = None) -> None:
        self.started = time.monotonic() if clock is None else clock
        self.mints: Counter[str] = Counter()
        self.tokens: list[Token] = []
        self.failures: list[float] = []  # when each non-"ok" answer other than token_spent arrived
        self.server_errors: list[str] = []  # 5xx other than 503 store_unavailable, with context
        self.unexpected: list[str] = []  # outcomes that are neither "ok" nor a clean refusal
        self.faults: list[Fault] = []
        self.registrations: Counter[str] = Counter()  # agent id -> agent.created received
        self.moves: list[tuple[str, str, float]] = []  # (agent, node, when) of each agent.created
        self.agent_refusals: Counter[str] = Counter()  # error codes on agent.create
        self.ended_agent: Counter[str] = Counter()  # call.ended reasons the agents received
        self.ended_browser: Counter[str] = Counter()  # how the browsers' sessions ended
        self.opened: dict[str, tuple[str, str, float]] = {}  # session id -> (agent, node, when)
        self.agent_started: dict[str, tuple[str, float]] = {}  # call id -> (session id, when)
        self.agent_ended: dict[str, float] = {}  # call id -> when its call.ended came

    def now(self) -> float:
        return time.monotonic() - self.started

    def _judge(self, what: str, outcome: str) -> None:
        if outcome == "ok":
            return
        if outcome != "token_spent":
            self.failures.append(self.now())
        if is_server_error(outcome):
            self.server_errors.append(f"{what} at {self.now():.2f}s: {outcome}")
        elif outcome not in CLEAN and outcome != "hung":
            self.unexpected.append(f"{what} at {self.now():.2f}s: {outcome}")

    def note_mint(self, outcome: str) -> None:
        self.mints[outcome] += 1
        self._judge("mint", outcome)

    def note_consume(self, token: Token, attempt: Attempt) -> None:
        token.attempts.append(attempt)
        self._judge("consume", attempt.outcome)

    # The figures the table prints.

    def consumes(self) -> Counter[str]:
        return Counter(a.outcome for t in self.tokens for a in t.attempts)

    def double_spent(self) -> list[Token]:
        return [t for t in self.tokens if t.opened() > 1]

    def late_accepted(self) -> list[Token]:
        return [t for t in self.tokens if t.late_accepts()]

    def hung(self) -> int:
        return self.mints["hung"] + self.consumes()["hung"]

    def unheard(self) -> tuple[list[str], list[str]]:
        """Sessions a browser opened whose agent never got the start frame, and those whose agent
        got the start but never a ``call.ended``."""
        calls = {session: call for call, (session, _) in self.agent_started.items()}
        no_start = [s for s in self.opened if s not in calls]
        no_end = [s for s in self.opened if s in calls and calls[s] not in self.agent_ended]
        return no_start, no_end

    def reregistered(self) -> int:
        return sum(max(0, n - 1) for n in self.registrations.values())

    def broken(self) -> list[str]:
        """Every invariant that does not hold, as a sentence; empty when the run is clean."""
        problems = []
        if self.double_spent():
            problems.append(f"{len(self.double_spent())} tokens opened more than one session")
        if self.late_accepted():
            problems.append(f"{len(self.late_accepted())} tokens were accepted after being reported consumed")
        if self.server_errors:
            problems.append(f"{len(self.server_errors)} 5xx other than 503 store_unavailable")
        if self.hung():
            problems.append(f"{self.hung()} requests got no answer within the timeout")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected answers: {self.unexpected[:3]}")
        for fault in self.faults:
            if fault.recovered is None:
                problems.append(f"no recovery after {fault.name} ({fault.note or 'no clean window'})")
        if not self.mints["ok"] or not self.consumes()["ok"]:
            problems.append("no token was minted and consumed: the run proves nothing")
        return problems


def is_server_error(outcome: str) -> bool:
    """An HTTP 5xx (mint, or the WebSocket handshake) or a 1011 close other than store_unavailable."""
    parts = outcome.split()
    if len(parts) >= 2 and parts[0] in ("http", "handshake") and parts[1].startswith("5"):
        return True
    return len(parts) >= 2 and parts[0] == "close" and parts[1] == "1011"
