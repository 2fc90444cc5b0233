"""The chaos tables (Markdown, so a run pastes into the README) and the JSON figures."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from scripts.chaos_lib.ledger import Ledger


@dataclass
class Result:
    label: str
    ledger: Ledger
    seconds: float
    error_lines: list[str] = field(default_factory=list)


def _codes(counts: Counter[str], skip: str = "ok") -> str:
    items = sorted(((k, v) for k, v in counts.items() if k != skip), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v}" for k, v in items) or "none"


def figures(result: Result) -> dict[str, Any]:
    ledger = result.ledger
    consumes = ledger.consumes()
    no_start, no_end = ledger.unheard()
    return {
        "label": result.label,
        "seconds": round(result.seconds, 1),
        "minted": ledger.mints["ok"],
        "mints_refused": {k: v for k, v in ledger.mints.items() if k != "ok"},
        "consume_attempts": sum(consumes.values()),
        "consumed": consumes["ok"],
        "tokens_consumed": sum(1 for t in ledger.tokens if t.opened()),
        "consumes_refused": {k: v for k, v in consumes.items() if k != "ok"},
        "double_spent": len(ledger.double_spent()),
        "accepted_after_consumed": len(ledger.late_accepted()),
        "server_errors": len(ledger.server_errors),
        "server_error_samples": ledger.server_errors[:10],
        "hung": ledger.hung(),
        "unexpected": ledger.unexpected[:10],
        "agents_reregistered": ledger.reregistered(),
        "agent_refusals": dict(ledger.agent_refusals),
        "agent_moves": ledger.moves,
        "ended_agent": dict(ledger.ended_agent),
        "ended_browser": dict(ledger.ended_browser),
        "error_lines": result.error_lines[:20],
        "agent_never_told_start": len(no_start),
        "agent_never_told_end": len(no_end),
        "untold_samples": [(s, *ledger.opened[s]) for s in no_start[:20] + no_end[:20]],
        "faults": [
            {
                "name": f.name,
                "at": round(f.injected, 2),
                "restored_after": None if f.restored is None else round(f.restored - f.injected, 2),
                "recovered_after_restore": None if f.recovered is None else round(f.recovered, 2),
                "failures": f.failures,
                "note": f.note,
            }
            for f in ledger.faults
        ],
        "broken": ledger.broken(),
    }


def tables(results: list[Result]) -> str:
    rows: list[tuple[str, list[str]]] = []
    data = [figures(r) for r in results]

    def row(name: str, values: list[Any]) -> None:
        rows.append((name, [str(v) for v in values]))

    row("run time", [f"{d['seconds']} s" for d in data])
    row("tokens minted", [d["minted"] for d in data])
    row("mints refused, by code", [_codes(r.ledger.mints) for r in results])
    row("consume attempts (racers + late + replay)", [d["consume_attempts"] for d in data])
    row("tokens consumed (a session opened)", [d["tokens_consumed"] for d in data])
    row("consumes refused, by code", [_codes(r.ledger.consumes()) for r in results])
    row("**double-spent** (must be 0)", [d["double_spent"] for d in data])
    row("**accepted after reported consumed** (must be 0)", [d["accepted_after_consumed"] for d in data])
    row("**5xx other than 503 store_unavailable** (must be 0)", [d["server_errors"] for d in data])
    row("**no answer within the timeout** (must be 0)", [d["hung"] for d in data])
    row("agents re-registered", [d["agents_reregistered"] for d in data])
    row("agent.create refused, by code", [_codes(r.ledger.agent_refusals, "") for r in results])
    row("sessions ended: agent's `call.ended` reason", [_codes(r.ledger.ended_agent, "") for r in results])
    row("sessions ended: what the browser saw", [_codes(r.ledger.ended_browser, "") for r in results])
    row("sessions opened whose agent never got the start", [d["agent_never_told_start"] for d in data])
    row("sessions whose agent never got `call.ended`", [d["agent_never_told_end"] for d in data])
    row("node error log lines", [len(d["error_lines"]) for d in data])
    head = "| | " + " | ".join(r.label for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows]
    lines += ["", "| run | fault | at | restored after | recovered after restore | failed answers |"]
    lines.append("|---|---|---|---|---|---|")
    for d in data:
        for f in d["faults"]:
            recovered = (
                "**no**" if f["recovered_after_restore"] is None else f"{f['recovered_after_restore']} s"
            )
            note = f" ({f['note']})" if f["note"] else ""
            lines.append(
                f"| {d['label']} | {f['name']}{note} | {f['at']} s | {f['restored_after']} s "
                f"| {recovered} | {f['failures']} |"
            )
    return "\n".join(lines)
