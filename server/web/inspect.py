"""The inspection API under ``/_voice/`` (issue 10; shapes in the README, "Inspection API").

Mounted only when ``VOICE_INSPECT`` is on: off, these paths are unknown routes (404
``not_found``, the same body as any other). On, outside dev mode (or whenever
``VOICE_ADMIN_KEYS`` is set), every request needs ``Authorization: Bearer <admin key>``:
missing 401 ``admin_key_required``, wrong 403 ``invalid_admin_key``. Bad input is a 400
``invalid_request`` naming what is wrong, never a 500.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from server.core import strictjson
from server.core.apikeys import parse_bearer
from server.core.tokens import Channel
from server.errors import (
    AdminKeyRequired,
    FaultNotFound,
    InvalidAdminKey,
    InvalidRequest,
    SessionNotFound,
    StoreUnavailable,
    VoiceError,
)
from server.services import control, inspector
from server.services.faults import FaultBoard
from server.services.inspector import MAX_LIMIT, Page
from server.services.journal import Journal
from server.services.node import Node
from server.web import openapi

Handler = Callable[[Request], Awaitable[Response]]
MAX_BODY = 16 * 1024
MAX_AFTER = 2**62
JSON_WHITESPACE = b" \t\r\n"  # RFC 8259 section 2
TOKEN_STATES = ("issued", "consumed", "expired")
SESSION_STATES = ("live", "ended")


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _journal(node: Node) -> Journal:
    assert node.journal is not None  # the routes exist only when inspection is on
    return node.journal


def guarded(handler: Handler) -> Handler:
    """The admin key check, before anything else the route does."""

    async def endpoint(request: Request) -> Response:
        node = _node(request)
        keys = node.settings.admin_keys
        if keys or not node.settings.dev:
            presented = parse_bearer(request.headers.get("authorization"))
            if not presented:
                raise AdminKeyRequired("the inspection API needs Authorization: Bearer <admin key>")
            # Every key is compared, in constant time, so timing does not tell which one nearly matched.
            matched = False
            for key in keys:
                matched |= hmac.compare_digest(presented.encode(), key.encode())
            if not matched:
                raise InvalidAdminKey("not one of VOICE_ADMIN_KEYS")
        return await handler(request)

    return endpoint


# -- query and body parsing ----------------------------------------------------------------------
def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    params = request.query_params
    unknown = sorted(set(params.keys()) - set(allowed))
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}; expected one of {', '.join(allowed)}")
    values: dict[str, str] = {}
    for name in params:
        value = params[name]
        if len(value) > 256:
            raise InvalidRequest(f"{name} is longer than 256 characters")
        values[name] = value
    return values


def _whole(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def _page(params: Mapping[str, str]) -> Page:
    return Page(_whole(params, "after", 0, 0, MAX_AFTER), _whole(params, "limit", 100, 1, MAX_LIMIT))


def _choice(params: Mapping[str, str], name: str, options: tuple[str, ...]) -> str | None:
    value = params.get(name) or None
    if value is not None and value not in options:
        raise InvalidRequest(f"{name} must be one of {', '.join(options)}, got {value[:40]!r}")
    return value


async def body_of(request: Request) -> dict[str, Any]:
    """A JSON object body (an empty body is ``{}``)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise InvalidRequest(f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip(JSON_WHITESPACE):  # bytes.strip() would also take \x0b and \x0c
        return {}
    try:
        value = strictjson.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest("the body must be a JSON object")
    return value


# -- routes --------------------------------------------------------------------------------------
async def health(request: Request) -> Response:
    node = _node(request)
    _query(request, ())
    store = "memory" if node.store.url.startswith("memory") else "redis"
    return JSONResponse({"inspect": True, "node": node.settings.node_id, "store": store})


async def journal(request: Request) -> Response:
    params = _query(request, ("kind", "agent_id", "after", "limit"))
    page = _page(params)
    kind, agent_id = params.get("kind") or None, params.get("agent_id") or None
    log = _journal(_node(request))
    await log.settle()
    items = [
        {"seq": seq, **entry}
        for seq, entry in await log.entries()
        if seq > page.after and inspector.journal_matches(entry, kind, agent_id)
    ]
    return JSONResponse(page.cut(items))


async def journal_stream(request: Request) -> Response:
    params = _query(request, ("kind", "agent_id", "after"))
    after = _whole(params, "after", -1, 0, MAX_AFTER)
    kind, agent_id = params.get("kind") or None, params.get("agent_id") or None
    node = _node(request)
    log = _journal(node)
    if after < 0:  # live only: from what the journal holds now
        after = (await log.page(0, 0)).last

    async def lines() -> AsyncIterator[bytes]:
        yield b": voice journal\n\n"
        async for seq, entry in log.follow(after, lambda: node.draining):
            if inspector.journal_matches(entry, kind, agent_id):
                yield b"data: " + json.dumps({"seq": seq, **entry}, separators=(",", ":")).encode() + b"\n\n"

    return StreamingResponse(
        lines(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def tokens(request: Request) -> Response:
    params = _query(request, ("agent_id", "channel", "state", "after", "limit"))
    page = _page(params)
    agent_id = params.get("agent_id") or None
    channel = _choice(params, "channel", tuple(c.value for c in Channel))
    state = _choice(params, "state", TOKEN_STATES)
    node = _node(request)
    log = _journal(node)
    await log.settle()
    rows = inspector.fold_tokens(await log.entries(), node.wall_clock())
    return JSONResponse(page.cut([r for r in rows if inspector.token_matches(r, agent_id, channel, state)]))


async def sessions(request: Request) -> Response:
    params = _query(request, ("agent_id", "state", "after", "limit"))
    page = _page(params)
    agent_id = params.get("agent_id") or None
    state = _choice(params, "state", SESSION_STATES)
    log = _journal(_node(request))
    await log.settle()
    folded = inspector.fold_sessions(await log.entries()).values()
    return JSONResponse(page.cut([s for s in folded if inspector.session_matches(s, agent_id, state)]))


async def session(request: Request) -> Response:
    _query(request, ())
    call_id = request.path_params["call_id"]
    log = _journal(_node(request))
    await log.settle()
    found = inspector.fold_sessions(await log.entries()).get(call_id)
    if found is None:
        raise SessionNotFound(f"no session {call_id[:128]!r} in the journal")
    return JSONResponse({**found, "timeline": await log.timeline(call_id)})


async def reset(request: Request) -> Response:
    _query(request, ())
    body = await body_of(request)
    unknown = sorted(set(body) - {"agents"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; expected agents")
    agents = body.get("agents", False)
    if not isinstance(agents, bool):
        raise InvalidRequest("agents must be true or false")
    families = await control.reset(_node(request), agents)
    return JSONResponse({"reset": True, "families": families})


async def clock(request: Request) -> Response:
    _query(request, ())
    node = _node(request)
    if request.method == "POST":
        await control.advance_clock(node, control.parse_clock(await body_of(request)))
    else:
        await control.load_clock(node)
    return JSONResponse({"offset_seconds": node.wall_clock.offset, "now": node.wall_clock()})


def _board(node: Node) -> FaultBoard:
    assert node.faults is not None  # set whenever inspection is on
    return node.faults


async def faults(request: Request) -> Response:
    _query(request, ())
    board = _board(_node(request))
    if request.method == "POST":
        fault = await board.add(await body_of(request))
        return JSONResponse(fault.to_item(), status_code=201)
    if request.method == "DELETE":
        return JSONResponse({"deleted": await board.delete(None)})
    return JSONResponse({"items": [f.to_item() for f in await board.items()]})


async def fault(request: Request) -> Response:
    _query(request, ())
    fault_id = request.path_params["fault_id"]
    return JSONResponse({"deleted": await _board(_node(request)).delete(fault_id)})


def routes() -> list[BaseRoute]:
    return [
        Route("/_voice/health", guarded(health), methods=["GET"]),
        Route("/_voice/journal", guarded(journal), methods=["GET"]),
        Route("/_voice/journal/stream", guarded(journal_stream), methods=["GET"]),
        Route("/_voice/tokens", guarded(tokens), methods=["GET"]),
        Route("/_voice/sessions", guarded(sessions), methods=["GET"]),
        Route("/_voice/sessions/{call_id}", guarded(session), methods=["GET"]),
        Route("/_voice/reset", guarded(reset), methods=["POST"]),
        Route("/_voice/clock", guarded(clock), methods=["GET", "POST"]),
        Route("/_voice/faults", guarded(faults), methods=["GET", "POST", "DELETE"]),
        Route("/_voice/faults/{fault_id}", guarded(fault), methods=["DELETE"]),
    ]


# -- the OpenAPI operations (server/web/openapi.py) ----------------------------------------------
INSPECTION = (
    "Exists only when inspection is on (`VOICE_INSPECT`, default on in dev mode, off elsewhere); "
    "off, every `/_voice/*` path answers 404 `not_found` like any unknown route. Outside dev mode, "
    "or whenever `VOICE_ADMIN_KEYS` is set, it needs `Authorization: Bearer <admin key>`."
)
_SEQ: openapi.Schema = {"type": "integer", "minimum": 1}
_TIME: openapi.Schema = {"type": "number", "description": "unix seconds"}
_NULL_TIME: openapi.Schema = {"type": ["number", "null"], "description": "unix seconds, or null"}
_STR: openapi.Schema = {"type": "string"}
_NULL_STR: openapi.Schema = {"type": ["string", "null"]}


def _param(name: str, description: str, schema: openapi.Schema | None = None) -> openapi.Schema:
    """A query parameter as :func:`_query` reads it: at most 256 characters, and empty the same as
    not given (a form's blank filter field)."""
    value = {"anyOf": [schema, {"const": ""}]} if schema else {"type": "string", "maxLength": 256}
    return openapi.query(name, description + "; empty: not given", value)


_AFTER = _param(
    "after", "Only entries with a larger `seq` (the previous page's `next_after`)", {**_SEQ, "minimum": 0}
)
_LIMIT = _param(
    "limit", "Entries per page (default 100)", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
)
_AGENT = _param("agent_id", "Only this agent's")
_KIND = _param("kind", 'An exact kind ("mint.allowed") or a prefix ending in "." ("mint.")')
_TOKEN: openapi.Schema = {
    "type": "object",
    "description": "A minted token as the journal saw it; never the token string or its signature.",
    "required": ["seq", "jti", "org", "agents", "channel", "state", "minted_at", "expires_at"],
    "properties": {
        "seq": _SEQ,
        "jti": _STR,
        "org": _STR,
        "agents": {"type": "array", "items": _STR},
        "channel": {"enum": [c.value for c in Channel]},
        "state": {"enum": list(TOKEN_STATES)},
        "minted_at": _TIME,
        "expires_at": _TIME,
        "consumed_at": _NULL_TIME,
        "consumed_by": {**_NULL_STR, "description": "the session (call) id that consumed it"},
        "node": _STR,
    },
}
_ENTRY: openapi.Schema = {
    "type": "object",
    "description": "One journal entry: `seq`, `at`, `kind`, `node` and the kind's own fields "
    "(mint.allowed, mint.refused, consume.allowed, consume.refused, client.connect, client.register, "
    "client.refuse, session.start, session.end, webhook.verdict, fault.applied; README).",
    "required": ["seq", "at", "kind", "node"],
    "properties": {"seq": _SEQ, "at": _TIME, "kind": _STR, "node": _STR},
    "additionalProperties": True,
}
_SESSION: openapi.Schema = {
    "type": "object",
    "required": ["seq", "call_id", "transport", "agent_id", "state", "started_at"],
    "properties": {
        "seq": _SEQ,
        "call_id": _STR,
        "transport": {"enum": ["webrtc", "chat", "whatsapp", "stream"]},
        "agent_id": _NULL_STR,
        "org": _NULL_STR,
        "state": {"enum": list(SESSION_STATES)},
        "started_at": _TIME,
        "ended_at": _NULL_TIME,
        "end_reason": _NULL_STR,
        "node": _STR,
    },
}
_TIMELINE: openapi.Schema = {
    "type": "array",
    "items": {
        "type": "object",
        "description": "One event of the session; audio is counted (`audio_frames`), never carried.",
        "required": ["at", "direction", "event"],
        "properties": {
            "at": _TIME,
            "direction": {"enum": ["browser->server", "server->browser", "server->agent", "agent->server"]},
            "event": _STR,
            "audio_frames": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": True,
    },
}
_FAULT: openapi.Schema = {
    "type": "object",
    "required": ["id", "target", "kind", "params", "probability", "remaining", "expires_at", "applied"],
    "properties": {
        "id": _STR,
        "target": {"enum": ["store", "mint", "consume", "client", "whatsapp"]},
        "kind": {"enum": ["unavailable", "slow", "fail", "drop", "delay"]},
        "params": {"type": "object", "description": "the kind's parameters, also repeated at the top level"},
        "probability": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "remaining": {"type": ["integer", "null"], "description": "applications left, or null"},
        "expires_at": _NULL_TIME,
        "applied": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": True,
}
_FAULT_SPEC: openapi.Schema = {
    "type": "object",
    "description": "target/kind: store/unavailable, store/slow {delay_ms}, mint/fail {channel?, "
    "agent_id?, status, code}, consume/fail {channel?, status, code}, client/drop {agent_id}, "
    "whatsapp/delay {delay_ms}, whatsapp/fail {status}. Every fault expires by itself: 60 seconds "
    "when neither count nor seconds is given.",
    "required": ["target", "kind"],
    "properties": {
        "target": _FAULT["properties"]["target"],
        "kind": _FAULT["properties"]["kind"],
        "count": {"type": "integer", "minimum": 1},
        "seconds": {"type": "number", "exclusiveMinimum": 0},
        "probability": _FAULT["properties"]["probability"],
        "delay_ms": {"type": "integer", "minimum": 0},
        "channel": {"enum": [c.value for c in Channel]},
        "agent_id": _STR,
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "code": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
    },
}
_CLOCK: openapi.Schema = {
    "type": "object",
    "required": ["offset_seconds", "now"],
    "properties": {"offset_seconds": {"type": "number", "minimum": 0}, "now": _TIME},
}
_DELETED: openapi.Schema = {
    "type": "object",
    "required": ["deleted"],
    "properties": {"deleted": {"type": "integer", "minimum": 0}},
}


def _list(item: openapi.Schema) -> openapi.Schema:
    return {
        "type": "object",
        "required": ["items", "next_after"],
        "properties": {
            "items": {"type": "array", "items": item, "description": "oldest first"},
            "next_after": {**_SEQ, "type": ["integer", "null"], "description": "`after` for the next page"},
        },
    }


def _body(description: str, schema: openapi.Schema, required: bool = False) -> openapi.Schema:
    return {
        "description": description,
        "required": required,
        "content": {"application/json": {"schema": schema}},
    }


def _op(
    method: str,
    path: str,
    summary: str,
    ok: Mapping[str, openapi.Schema],
    errors: tuple[type[VoiceError], ...] = (),
    **extra: Any,
) -> openapi.Operation:
    return openapi.Operation(
        method,
        path,
        summary,
        tag="inspection",
        description=INSPECTION,
        ok=ok,
        errors=(AdminKeyRequired, InvalidAdminKey, InvalidRequest, *errors),
        http_errors={404: "not_found"},
        security=openapi.ADMIN_KEY,
        **extra,
    )


def operations() -> list[openapi.Operation]:
    return [
        _op(
            "get",
            "/_voice/health",
            "Inspection is on: this node and its store",
            {
                "200": openapi.json_ok(
                    "On",
                    {
                        "type": "object",
                        "required": ["inspect", "node", "store"],
                        "properties": {
                            "inspect": {"const": True},
                            "node": _STR,
                            "store": {"enum": ["memory", "redis"]},
                        },
                    },
                )
            },
        ),
        _op(
            "get",
            "/_voice/journal",
            "The journal, a page at a time",
            {"200": openapi.json_ok("A page of entries", _list(_ENTRY))},
            parameters=(_KIND, _AGENT, _AFTER, _LIMIT),
        ),
        _op(
            "get",
            "/_voice/journal/stream",
            "The journal, live, as server-sent events",
            {
                "200": openapi.typed_ok(
                    "A comment line first, then one `data: <entry JSON>` event per entry as it happens",
                    "text/event-stream",
                )
            },
            parameters=(
                _KIND,
                _AGENT,
                _param(
                    "after",
                    "Replay the entries after this seq first (default: live only)",
                    {**_SEQ, "minimum": 0},
                ),
            ),
        ),
        _op(
            "get",
            "/_voice/tokens",
            "Minted tokens and what became of them",
            {"200": openapi.json_ok("A page of tokens", _list(_TOKEN))},
            parameters=(
                _AGENT,
                _param("channel", "Only this channel's", {"enum": [c.value for c in Channel]}),
                _param("state", "Only tokens in this state", {"enum": list(TOKEN_STATES)}),
                _AFTER,
                _LIMIT,
            ),
        ),
        _op(
            "get",
            "/_voice/sessions",
            "Sessions, live and ended",
            {"200": openapi.json_ok("A page of sessions", _list(_SESSION))},
            parameters=(
                _AGENT,
                _param("state", "Only sessions in this state", {"enum": list(SESSION_STATES)}),
                _AFTER,
                _LIMIT,
            ),
        ),
        _op(
            "get",
            "/_voice/sessions/{call_id}",
            "One session with its timeline",
            {
                "200": openapi.json_ok(
                    "The session",
                    {
                        **_SESSION,
                        "required": [*_SESSION["required"], "timeline"],
                        "properties": {**_SESSION["properties"], "timeline": _TIMELINE},
                    },
                )
            },
            (SessionNotFound,),
        ),
        _op(
            "post",
            "/_voice/reset",
            "Forget tokens, sessions, the journal and rate-limit buckets on every node",
            {
                "200": openapi.json_ok(
                    "Reset",
                    {
                        "type": "object",
                        "required": ["reset", "families"],
                        "properties": {
                            "reset": {"const": True},
                            "families": {"type": "array", "items": _STR},
                        },
                    },
                )
            },
            (StoreUnavailable,),
            body=_body(
                "Empty, or whether registered agents go too (default false)",
                {
                    "type": "object",
                    "properties": {"agents": {"type": "boolean"}},
                    "additionalProperties": False,
                },
            ),
        ),
        _op(
            "get",
            "/_voice/clock",
            "The deployment clock's offset",
            {"200": openapi.json_ok("The clock", _CLOCK)},
            (StoreUnavailable,),
        ),
        _op(
            "post",
            "/_voice/clock",
            "Move the deployment clock ahead (token expiry, session timers, rate-limit windows), or back",
            {"200": openapi.json_ok("The clock now", _CLOCK)},
            (StoreUnavailable,),
            body=_body(
                "One of the two",
                {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["advance_seconds"],
                            "properties": {"advance_seconds": {"type": "number", "exclusiveMinimum": 0}},
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "required": ["reset"],
                            "properties": {"reset": {"const": True}},
                            "additionalProperties": False,
                        },
                    ]
                },
                required=True,
            ),
        ),
        _op(
            "get",
            "/_voice/faults",
            "Active faults",
            {
                "200": openapi.json_ok(
                    "The faults",
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": _FAULT}},
                    },
                )
            },
            (StoreUnavailable,),
        ),
        _op(
            "post",
            "/_voice/faults",
            "Inject a fault, deployment-wide",
            {"201": openapi.json_ok("The fault", _FAULT)},
            (StoreUnavailable,),
            body=_body("The fault", _FAULT_SPEC, required=True),
        ),
        _op(
            "delete",
            "/_voice/faults",
            "Remove every fault",
            {"200": openapi.json_ok("How many went", _DELETED)},
            (StoreUnavailable,),
        ),
        _op(
            "delete",
            "/_voice/faults/{fault_id}",
            "Remove one fault",
            {"200": openapi.json_ok("It went", _DELETED)},
            (FaultNotFound, StoreUnavailable),
        ),
    ]
