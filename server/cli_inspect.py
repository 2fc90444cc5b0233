"""``voice-server inspect``: the inspection API (``/_voice/*``) of a running server, from a shell.

voice-server inspect [--url URL] [--admin-key KEY] [--env-file PATH] [--json] tokens [--agent-id A] ...
voice-server inspect ... journal [--kind K] [--agent-id A] [--after SEQ] [--follow]
voice-server inspect ... sessions [CALL_ID] [--agent-id A] [--state live|ended]
voice-server inspect ... reset [--agents]
voice-server inspect ... fault add TARGET KIND [--param NAME=VALUE]... [--count N] [--seconds S]
                                                [--probability P]
voice-server inspect ... fault list | fault clear [ID]
voice-server inspect ... clock [--advance SECONDS | --reset]

Without ``--url`` and ``--admin-key`` they come from the server's own environment (as for
``keys``): its public URL and first admin key. A table for people, ``--json`` for scripts (the
API's own JSON, one document; ``journal --follow --json`` prints one entry per line). A refusal
prints the server's detail and code and exits 1; a server with inspection off says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from server.settings import Settings

if TYPE_CHECKING:  # imported where used: the other commands need none of it
    from server.testkit.inspector import Inspector


def add_commands(commands: Any) -> None:
    """Register the ``inspect`` group on the top-level ``voice-server`` subparsers."""
    inspect = commands.add_parser("inspect", help="read and steer a server through its /_voice API")
    inspect.add_argument(
        "--url", help="the server's base URL (default: its VOICE_PUBLIC_URL, or VOICE_HOST/VOICE_PORT)"
    )
    inspect.add_argument(
        "--admin-key",
        help="sent as Authorization: Bearer, needed outside dev mode (default: first of VOICE_ADMIN_KEYS)",
    )
    inspect.add_argument(
        "--env-file",
        metavar="PATH",
        help="read the server's environment file (systemd EnvironmentFile=, compose env_file) first",
    )
    inspect.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    actions = inspect.add_subparsers(required=True, metavar="WHAT")

    tokens = actions.add_parser("tokens", help="one row per mint: state, consumer, node")
    tokens.add_argument("--agent-id")
    tokens.add_argument("--channel", help="webrtc, chat or stream")
    tokens.add_argument("--state", help="issued, consumed or expired")
    tokens.add_argument("--after", type=int, metavar="SEQ")
    tokens.set_defaults(run=_tokens)

    journal = actions.add_parser("journal", help="every decision the server made, in order")
    journal.add_argument("--kind", help='an exact kind or a prefix ending in "." (mint.)')
    journal.add_argument("--agent-id")
    journal.add_argument("--after", type=int, metavar="SEQ")
    journal.add_argument("--follow", action="store_true", help="then go on printing entries as they come")
    journal.set_defaults(run=_journal)

    sessions = actions.add_parser("sessions", help="live and recent sessions, or one with its timeline")
    sessions.add_argument("call_id", nargs="?", help="show this session and its timeline")
    sessions.add_argument("--agent-id")
    sessions.add_argument("--state", help="live or ended")
    sessions.set_defaults(run=_sessions)

    reset = actions.add_parser("reset", help="back to a clean state (keys and agents stay)")
    reset.add_argument("--agents", action="store_true", help="forget registered agents too")
    reset.set_defaults(run=_reset)

    fault = actions.add_parser("fault", help="inject, list and clear faults").add_subparsers(
        required=True, metavar="ACTION"
    )
    add = fault.add_parser("add", help="inject a fault (it expires by itself)")
    add.add_argument("target", help="store, mint, consume, client or whatsapp")
    add.add_argument("kind", help="unavailable, slow, fail, drop, delay")
    add.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a field of the fault (delay_ms=500, channel=chat, status=503, code=...); repeatable",
    )
    add.add_argument("--count", type=int, help="applications before it expires")
    add.add_argument("--seconds", type=float, help="seconds before it expires")
    add.add_argument("--probability", type=float, help="0..1, the chance each operation is hit")
    add.set_defaults(run=_fault_add)
    listing = fault.add_parser("list", help="the active faults")
    listing.set_defaults(run=_fault_list)
    clear = fault.add_parser("clear", help="remove one fault, or all")
    clear.add_argument("fault_id", nargs="?")
    clear.set_defaults(run=_fault_clear)

    clock = actions.add_parser("clock", help="show or move the server's clock")
    move = clock.add_mutually_exclusive_group()
    move.add_argument("--advance", type=float, metavar="SECONDS", help="move the clock forward")
    move.add_argument("--reset", action="store_true", help="back to real time")
    clock.set_defaults(run=_clock)

    for parser in (tokens, journal, sessions, reset, add, listing, clear, clock):
        parser.set_defaults(action=parser.get_default("run"), run=run)


def run(args: argparse.Namespace) -> int:
    """Run one ``inspect`` action; the server's refusals and an unreachable URL are one line and 1."""
    import httpx

    from server.testkit.inspector import Inspector, InspectorError

    if args.url is None or args.admin_key is None:
        # Run next to the server, with its environment: its URL and key need no flag (and the
        # key stays out of the process list).
        settings = Settings.from_env(env_file=args.env_file, serving=False)
        args.url = args.url or settings.public_url
        args.admin_key = args.admin_key or (settings.admin_keys[0] if settings.admin_keys else None)
    with Inspector(args.url, args.admin_key) as inspector:
        try:
            return int(args.action(inspector, args))
        except InspectorError as exc:
            print(f"voice-server: {exc.detail} ({exc.code})", file=sys.stderr)
        except httpx.HTTPError as exc:
            print(f"voice-server: cannot reach {args.url}: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            return 130
    return 1


# -- actions ----------------------------------------------------------------------------------------
def _tokens(inspector: Inspector, args: argparse.Namespace) -> int:
    rows = inspector.tokens(args.agent_id, args.channel, args.state, args.after)
    if args.json:
        return _dump({"items": rows})
    table = [
        (
            r["seq"],
            r["jti"],
            r["channel"],
            ",".join(r["agents"]),
            r["state"],
            _time(r["minted_at"]),
            _time(r.get("consumed_at")),
            r.get("consumed_by") or "-",
            r.get("node") or "-",
        )
        for r in rows
    ]
    header = ("SEQ", "JTI", "CHANNEL", "AGENTS", "STATE", "MINTED", "CONSUMED", "BY", "NODE")
    return _table(header, table)


def _journal(inspector: Inspector, args: argparse.Namespace) -> int:
    entries = inspector.journal(args.kind, args.agent_id, args.after)
    if args.json and not args.follow:
        return _dump({"items": entries})
    _print_entries(entries, args.json, header=True)
    if args.follow:
        after = entries[-1]["seq"] if entries else args.after
        for entry in inspector.stream_journal(after=after, kind=args.kind, agent_id=args.agent_id):
            _print_entries([entry], args.json, header=False)
    return 0


def _print_entries(entries: Iterable[dict[str, Any]], as_json: bool, header: bool) -> None:
    if as_json:
        for entry in entries:
            print(json.dumps(entry, separators=(",", ":")), flush=True)
        return
    rows = [
        (e["seq"], _time(e["at"]), e["kind"], e.get("node") or "-", _fields(e, {"seq", "at", "kind", "node"}))
        for e in entries
    ]
    _table(("SEQ", "AT", "KIND", "NODE", "DETAILS"), rows, show_header=header, widths=(6, 12, 16, 12))


def _sessions(inspector: Inspector, args: argparse.Namespace) -> int:
    if args.call_id:
        session = inspector.session(args.call_id)
        if args.json:
            return _dump(session)
        for name in ("call_id", "transport", "agent_id", "org", "state", "node", "end_reason"):
            print(f"{name + ':':<12}{session.get(name) or '-'}")
        print(f"{'started:':<12}{_time(session.get('started_at'))}")
        print(f"{'ended:':<12}{_time(session.get('ended_at'))}")
        print()
        timeline = session.get("timeline", [])
        rows = [
            (_time(t["at"]), t["direction"], t["event"], _fields(t, {"at", "direction", "event"}))
            for t in timeline
        ]
        return _table(("AT", "DIRECTION", "EVENT", "DETAILS"), rows)
    items = inspector.sessions(args.agent_id, args.state)
    if args.json:
        return _dump({"items": items})
    listed: list[tuple[object, ...]] = [
        (
            s["call_id"],
            s["transport"],
            s["agent_id"],
            s["state"],
            _time(s["started_at"]),
            _time(s.get("ended_at")),
            s.get("end_reason") or "-",
            s.get("node") or "-",
        )
        for s in items
    ]
    return _table(("CALL", "TRANSPORT", "AGENT", "STATE", "STARTED", "ENDED", "REASON", "NODE"), listed)


def _reset(inspector: Inspector, args: argparse.Namespace) -> int:
    result = inspector.reset(agents=args.agents)
    if args.json:
        return _dump(result)
    print("reset: " + ", ".join(result.get("families", [])))
    return 0


def _fault_add(inspector: Inspector, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    for pair in args.param:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            print(f"voice-server: --param wants NAME=VALUE, got {pair!r}", file=sys.stderr)
            return 2
        params[name] = _scalar(value)
    for name in ("count", "seconds", "probability"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    fault = inspector.add_fault(args.target, args.kind, **params)
    if args.json:
        return _dump(fault)
    return _faults_table([fault])


def _fault_list(inspector: Inspector, args: argparse.Namespace) -> int:
    faults = inspector.faults()
    if args.json:
        return _dump({"items": faults})
    return _faults_table(faults)


def _fault_clear(inspector: Inspector, args: argparse.Namespace) -> int:
    result = inspector.clear_faults(args.fault_id)
    if args.json:
        return _dump(result)
    print(f"deleted: {result.get('deleted', 1)}")
    return 0


def _clock(inspector: Inspector, args: argparse.Namespace) -> int:
    if args.advance is not None:
        result = inspector.advance_clock(args.advance)
    elif args.reset:
        result = inspector.reset_clock()
    else:
        result = inspector.clock()
    if args.json:
        return _dump(result)
    print(f"offset: {result['offset_seconds']:g}s  now: {_time(result['now'], full=True)}")
    return 0


# -- output -----------------------------------------------------------------------------------------
def _faults_table(faults: Sequence[dict[str, Any]]) -> int:
    rows = [
        (
            f["id"],
            f["target"],
            f["kind"],
            json.dumps(f.get("params") or {}, separators=(",", ":")),
            "-" if f.get("remaining") is None else f["remaining"],
            _time(f.get("expires_at")),
            f.get("applied", 0),
        )
        for f in faults
    ]
    return _table(("ID", "TARGET", "KIND", "PARAMS", "LEFT", "EXPIRES", "APPLIED"), rows)


def _table(
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    show_header: bool = True,
    widths: Sequence[int] | None = None,
) -> int:
    """Left-aligned columns two spaces apart; the last one is never padded. ``widths`` fixes the
    first columns' widths (a followed journal prints rows one at a time)."""
    cells = [[str(c) for c in row] for row in rows]
    streamed = widths is not None
    if widths is None:
        widths = [max(len(r[i]) for r in [list(columns), *cells]) for i in range(len(columns) - 1)]
    lines = ([list(columns)] if show_header else []) + cells
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*padded, *line[len(padded) :]]).rstrip(), flush=True)
    if show_header and not cells and not streamed:
        print("(none)")
    return 0


def _dump(document: object) -> int:
    print(json.dumps(document, indent=2))
    return 0


def _time(at: float | None, full: bool = False) -> str:
    """Unix seconds as UTC ``HH:MM:SS.mmm`` (with the date when ``full``); ``-`` for none."""
    if at is None:
        return "-"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S" if full else "%H:%M:%S", time.gmtime(at))
    return f"{stamp}.{int(at * 1000) % 1000:03d}" + ("Z" if full else "")


def _fields(item: dict[str, Any], skip: set[str]) -> str:
    """The remaining fields as ``name=value``, values compact JSON unless they are plain strings."""
    parts = []
    for name, value in item.items():
        if name in skip or value is None:
            continue
        shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{name}={shown}")
    return " ".join(parts)


def _scalar(text: str) -> object:
    """A --param value: a number or true/false/null when it reads as one, else the string."""
    try:
        value: object = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) or value is None else text
