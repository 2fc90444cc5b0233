"""Mint routes: ``GET /webrtc/token``, ``/chat/token``, ``/stream/token`` (CONTRACT §1, §5).

Two ways in, and nothing else:
* a secret API key (``Authorization: Bearer sk_...``) names the org; the agent must be one
  of that org's online agents; only this path may seal ``metadata``;
* no key (or a publishable key, which only pins the org): the request's ``Origin`` must match
  the agent's ``allowed_origins``. An agent that is online but registered without them is
  refused 403 ``agent_not_public``, an offline one 404 ``agent_not_online``; those two refusals
  (what a stranger probing agent ids sees) count against a per-client-IP bucket of the public
  rate limit (README, Security).

A token goes to matching origins only: a 200 carries CORS headers only for them, always with
``Vary: Origin``; the preflight carries the same query string and is judged against the same
agent. A refusal of the origin or credential (401, 403) follows the same rule; any other
refusal is readable by any well-formed origin (``_refusal_cors``).

These routes sit on every page load of every customer's app, so they are plain ASGI
endpoints: one pass over the raw headers, the query string parsed once, the answer written
as bytes (no Request/Response objects; ``scripts/bench`` measured ~10% of the route in them).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.core.apikeys import KeyKind, kind_of, parse_bearer
from server.core.clientip import client_ip
from server.core.origins import Origin, matched_pattern, origin_allowed, parse_origin
from server.core.slugs import MAX_AGENT_ID, agent_slug
from server.core.tokens import MAX_METADATA_BYTES, SCOPES, Channel, parse_metadata, parse_scope
from server.errors import (
    AgentNotOnline,
    AgentNotPublic,
    BadRequest,
    InvalidApiKey,
    NoCredential,
    OriginNotAllowed,
    RateLimited,
    StoreUnavailable,
    VoiceError,
)
from server.services.agents import patterns_of
from server.services.node import Node
from server.store.base import AgentRecord, Hit, agent_key
from server.web import openapi

log = logging.getLogger("voice.http")
_COMPACT = json.JSONEncoder(separators=(",", ":"))
MAX_STREAM_AGENTS = 16
_CALL_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


class MintRequest(NamedTuple):
    """What a mint reads from the request, taken from the ASGI scope in one pass."""

    params: dict[str, str]  # the query string; the last value of a repeated name wins
    origin: str | None
    authorization: str | None
    forwarded_for: str | None  # every X-Forwarded-For line, joined in order
    peer: str | None

    @classmethod
    def from_scope(cls, scope: Scope) -> MintRequest:
        origin = authorization = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"origin" and origin is None:
                origin = value.decode("latin-1")
            elif name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                # A proxy that appends its own line instead of merging must not let the
                # client's forged first line decide.
                forwarded.append(value.decode("latin-1"))
        query = scope["query_string"].decode("latin-1")
        client = scope.get("client")
        return cls(
            params=parse_query(query),
            origin=origin,
            authorization=authorization,
            forwarded_for=",".join(forwarded) or None,
            peer=client[0] if client else None,
        )


def parse_query(query: str) -> dict[str, str]:
    """``dict(parse_qsl(query, keep_blank_values=True))``: the last value of a name wins. Plain
    ``name=value`` pairs (what the SDKs send) are split without ``parse_qsl``'s per-pair work."""
    if "%" in query or "+" in query:
        return dict(parse_qsl(query, keep_blank_values=True))
    params: dict[str, str] = {}
    for pair in query.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            params[name] = value
    return params


def _agent_ids(request: MintRequest, channel: Channel) -> list[tuple[str, str]]:
    """(slug, as sent) for each requested agent; ``stream`` may name several, comma-joined."""
    raw = request.params.get("agent_id")
    if raw is None or not raw.strip():
        raise BadRequest("agent_id is required")
    if channel is not Channel.STREAM:
        if "," in raw:
            raise BadRequest("agent_id names one agent (only /stream/token takes a comma-joined list)")
        return [(agent_slug(raw), raw.strip())]
    parts = raw.split(",")
    if len(parts) > MAX_STREAM_AGENTS:
        raise BadRequest(f"at most {MAX_STREAM_AGENTS} agents per stream token")
    seen: dict[str, str] = {}
    for part in parts:
        seen.setdefault(agent_slug(part), part.strip())
    return list(seen.items())


def _matching(records: Sequence[AgentRecord], origin_header: str | None) -> Origin | None:
    """The parsed origin when it matches every requested agent's ``allowed_origins``."""
    matched: Origin | None = None
    for record in records:
        matched = origin_allowed(patterns_of(record.allowed_origins), origin_header)
        if matched is None:
            return None
    return matched


def _public_bucket(records: Sequence[AgentRecord], origin: Origin, ip: str) -> str:
    """The public path's rate-limit bucket: the allowed_origins patterns the origin matched
    (never the concrete origin, which a client can rotate under a wildcard) and the client IP."""
    matched = []
    for record in records:
        pattern = matched_pattern(patterns_of(record.allowed_origins), origin)
        matched.append(pattern.raw if pattern is not None else str(origin))
    return "o:" + ",".join(matched) + "|" + ip


async def _records(node: Node, agents: list[tuple[str, str]], org_id: str) -> list[AgentRecord]:
    """The requested agents of ``org_id`` (the secret-key path); one moving off a draining node
    is waited for (services/handoff.py)."""
    if not node.handoff.moving:  # the hot path: no agent is moving anywhere
        return [await node.registry.find(org_id, slug, shown_as=shown) for slug, shown in agents]
    records = []
    for slug, shown in agents:
        key = agent_key(org_id, slug)
        records.append(
            await node.handoff.find(
                key,
                functools.partial(node.registry.find, org_id, slug, shown_as=shown),
                functools.partial(node.registry.forget_cached, key),
            )
        )
    return records


async def _server(node: Node, record: AgentRecord) -> str:
    """The node the session should land on: the agent's, unless that node is draining."""
    if not node.handoff.draining:  # the hot path: no node is draining
        return record.node_url
    key = agent_key(record.org_id, record.agent_id)
    return await node.handoff.server_for(
        record,
        functools.partial(node.registry.find, record.org_id, record.agent_id),
        functools.partial(node.registry.forget_cached, key),
    )


async def _public_records(
    node: Node, request: MintRequest, agents: list[tuple[str, str]], org_id: str | None
) -> list[AgentRecord]:
    """The requested agents for the key-less path: the published ones, or the pinned org's
    (a publishable key). An agent online without ``allowed_origins`` is refused 403
    ``agent_not_public``, an offline one 404 (CONTRACT §1); each such refusal is counted in the
    client IP's probe bucket, so a stranger cannot walk a list of agent ids at full speed."""
    records = []
    try:
        for slug, shown in agents:
            if org_id is not None:
                record = await node.registry.find(org_id, slug, shown_as=shown)
                if not record.allowed_origins:
                    raise AgentNotPublic(shown)
            else:
                try:
                    record = await node.handoff.find(
                        slug,
                        functools.partial(node.registry.find_public, slug, shown_as=shown),
                        functools.partial(node.registry.forget_cached, "/" + slug),
                    )
                except AgentNotOnline:
                    # Only after the published lookup failed: the hot path never pays for this.
                    if await node.registry.online_anywhere(slug):
                        raise AgentNotPublic(shown) from None
                    raise
            records.append(record)
    except (AgentNotOnline, AgentNotPublic) as refused:
        settings = node.settings
        ip = client_ip(request.peer, request.forwarded_for, settings.trusted_proxies)
        verdict = await node.store.hit([Hit("p:" + ip, settings.rate_limit_public)])
        if not verdict.allowed:
            raise RateLimited(
                "Too many requests for agents that are offline or not public; slow down", verdict.retry_after
            ) from refused
        raise
    return records


def _cors(origin: Origin | None) -> dict[str, str]:
    headers = {"Vary": "Origin"}
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = str(origin)
    return headers


def _refusal_cors(exc: VoiceError, origin_header: str | None, matched: Origin | None) -> dict[str, str]:
    """CORS of a refused mint. Without these headers the page gets only "Failed to fetch" instead
    of the ``detail`` and ``code`` (the web client reads the body of a refused mint: pinecall/web
    src/chat/ChatSession.ts; issue 18 item 4). A refusal of the origin or the credential (401,
    403) is for matching origins only, as a token is (CONTRACT §5): a hostile page learns nothing
    from it. Any other refusal (the agent is not online, 400, 429, 503) says nothing about the
    caller and is readable by the page of any well-formed origin."""
    readable = matched if exc.status in (401, 403) else matched or parse_origin(origin_header)
    headers = _cors(readable)
    if "Access-Control-Allow-Origin" in headers:
        headers["Access-Control-Expose-Headers"] = "Retry-After"
    return headers


Headers = list[tuple[bytes, bytes]]
_VARY = (b"vary", b"Origin")
_NO_STORE = (b"cache-control", b"no-store")
_JSON = (b"content-type", b"application/json")


class Answer(NamedTuple):
    status: int
    headers: Headers
    body: bytes | None = None  # JSON


def _answer(status: int, headers: dict[str, str], body: dict[str, Any] | None = None) -> Answer:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return Answer(status, raw, None if body is None else _COMPACT.encode(body).encode())


def _error(exc: VoiceError, headers: dict[str, str]) -> Answer:
    """The one error shape (CONTRACT §1), as ``server.web.errors`` writes it elsewhere."""
    return _answer(exc.status, {**exc.headers(), **headers, "Cache-Control": "no-store"}, exc.to_body())


@functools.lru_cache(maxsize=256)
def _json_string(text: str) -> bytes:
    return _COMPACT.encode(text).encode()


def _minted(token: str, server: str, expires_in: int, cors_origin: Origin | None) -> Answer:
    """The 200 answer, written straight to bytes: it is on every page load (same JSON as
    ``{"token", "server", "expires_in", "expiresIn"}`` through the encoder)."""
    headers = [_VARY, _NO_STORE]
    if cors_origin is not None:
        headers.insert(1, (b"access-control-allow-origin", str(cors_origin).encode("latin-1")))
    body = b'{"token":"%b","server":%b,"expires_in":%d,"expiresIn":%d}' % (
        token.encode("ascii"),  # prefix + base64url + "." + base64url: nothing to escape
        _json_string(server),
        expires_in,
        expires_in,
    )
    return Answer(200, headers, body)


async def mint(node: Node, request: MintRequest, channel: Channel) -> Answer:
    origin_header = request.origin
    cors_origin: Origin | None = None
    path = "key"
    try:
        agents = _agent_ids(request, channel)
        if node.faults is not None and node.faults.active:
            node.faults.refusal("mint", channel=channel.value, agent_id=agents[0][0])
        params = request.params
        scope = parse_scope(params.get("scope"))
        call_id = params.get("call_id") or None
        if call_id is not None and not _CALL_ID.fullmatch(call_id):
            raise BadRequest("call_id must be 1-128 characters of letters, digits and _ . : -")
        credential = parse_bearer(request.authorization)
        if credential == "":
            raise InvalidApiKey("Malformed Authorization header; expected 'Bearer <api key>'")
        settings = node.settings

        if credential is not None and kind_of(credential) is KeyKind.SECRET:
            key = await node.keys.authenticate(credential, KeyKind.SECRET)
            records = await _records(node, agents, key.org_id)
            cors_origin = _matching(records, origin_header) if origin_header else None
            metadata = parse_metadata(params.get("metadata"))
            hits = [Hit("k:" + key.key_id, settings.rate_limit_key)]
            org_id = key.org_id
        else:
            path = "public"
            publishable = (
                await node.keys.authenticate(credential, KeyKind.PUBLISHABLE)
                if credential is not None
                else None
            )
            if origin_header is None:
                raise NoCredential(
                    "No API key and no Origin: mint from your backend with a secret API key, "
                    "or register the agent with allowed_origins and call from a browser"
                )
            if params.get("metadata"):
                raise BadRequest("metadata can only be sealed by a backend request with a secret API key")
            records = await _public_records(
                node, request, agents, publishable.org_id if publishable else None
            )
            cors_origin = _matching(records, origin_header)
            if cors_origin is None:
                raise OriginNotAllowed(f"Origin {origin_header[:200]!r} is not allowed for this agent")
            ip = client_ip(request.peer, request.forwarded_for, settings.trusted_proxies)
            hits = [Hit(_public_bucket(records, cors_origin, ip), settings.rate_limit_public)]
            if publishable is not None:
                hits.append(Hit("k:" + publishable.key_id, settings.rate_limit_key))
            metadata = {}
            org_id = records[0].org_id

        server = await _server(node, records[0])
        minted = await node.authority.mint(
            org_id=org_id,
            agents=[r.agent_id for r in records],
            channel=channel,
            metadata=metadata,
            scope=scope,
            call_id=call_id,
            hits=hits,
        )
    except VoiceError as exc:
        node.metrics.refused.labels("mint", exc.code).inc()
        if node.journal is not None:
            node.journal.note(
                "mint.refused",
                code=exc.code,
                status=exc.status,
                channel=channel.value,
                agent_id=(request.params.get("agent_id") or "")[:128] or None,
                origin=origin_header[:200] if origin_header else None,
            )
        if isinstance(exc, RateLimited):
            node.metrics.rate_limited.labels("key" if path == "key" else "public").inc()
        return _error(exc, _refusal_cors(exc, origin_header, cors_origin))
    node.metrics.count_mint(channel.value, path)
    return _minted(minted.token, server, minted.expires_in, cors_origin)


async def preflight(node: Node, request: MintRequest, channel: Channel) -> Answer:
    """CORS preflight of a mint: judged against the agent named in its query string."""
    origin_header = request.origin
    try:
        if origin_header is None:
            raise NoCredential("a CORS preflight needs an Origin header")
        records = await _public_records(node, request, _agent_ids(request, channel), None)
        origin = _matching(records, origin_header)
        if origin is None:
            raise OriginNotAllowed(f"Origin {origin_header[:200]!r} is not allowed for this agent")
    except VoiceError as exc:
        return _error(exc, {"Vary": "Origin"})
    return _answer(204, {**_cors(origin), **PREFLIGHT_HEADERS})


class MintEndpoint:
    """The ASGI endpoint of one channel's mint route (GET, and OPTIONS for the preflight)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        node: Node = scope["app"].state.node
        request = MintRequest.from_scope(scope)
        handler = preflight if scope["method"] == "OPTIONS" else mint
        try:
            answer = await handler(node, request, self.channel)
        except Exception:
            # What Starlette's error middleware would answer; the fast lane runs without it.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            answer = _answer(500, {}, {"detail": "Internal server error", "code": "internal_error"})
        body = answer.body
        headers = answer.headers
        if body is not None:
            headers = [*headers, _JSON, (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body or b""})


def fast_lane() -> dict[tuple[str, str], MintEndpoint]:
    """The same endpoints by (scope type, exact path), for ``VoiceApp``'s fast lane."""
    return {("http", f"/{c.value}/token"): MintEndpoint(c) for c in Channel}


def routes() -> list[Route]:
    return [
        Route(f"/{c.value}/token", MintEndpoint(c), methods=["GET", "OPTIONS"], name=f"mint_{c.value}")
        for c in Channel
    ]


_MINT_ERRORS = (
    BadRequest,
    InvalidApiKey,
    NoCredential,
    AgentNotPublic,
    OriginNotAllowed,
    AgentNotOnline,
    RateLimited,
    StoreUnavailable,
)
_PREFLIGHT_ERRORS = (BadRequest, NoCredential, AgentNotPublic, OriginNotAllowed, AgentNotOnline, RateLimited)
_MINTED_SCHEMA = {
    "type": "object",
    "required": ["token", "server", "expires_in", "expiresIn"],
    "properties": {
        "token": {"type": "string", "description": "single use; present it once to the server named"},
        "server": {"type": "string", "description": "the node the session must land on"},
        "expires_in": {"type": "integer", "minimum": 0, "description": "seconds"},
        "expiresIn": {"type": "integer", "minimum": 0, "description": "the same, for the SDK"},
    },
}
_CORS_HEADERS = {
    "Vary": openapi.header("always `Origin`", required=True),
    "Access-Control-Allow-Origin": openapi.header("the request's Origin, when it matches allowed_origins"),
}


def _agent_id_parameter(channel: Channel) -> dict[str, Any]:
    # agent_slug keeps a-z, 0-9 and '-' of the lower-cased id: one of them must be there.
    if channel is Channel.STREAM:
        part = r"[^,]*[A-Za-z0-9][^,]*"
        return openapi.query(
            "agent_id",
            f"agent slugs, up to {MAX_STREAM_AGENTS} comma-joined, each at most {MAX_AGENT_ID} characters",
            {"type": "string", "pattern": f"^{part}(,{part}){{0,{MAX_STREAM_AGENTS - 1}}}$"},
            required=True,
        )
    return openapi.query(
        "agent_id",
        "the agent's id (slugified: case, spaces and '_' do not matter)",
        {"type": "string", "maxLength": MAX_AGENT_ID, "pattern": "^[^,]*[A-Za-z0-9][^,]*$"},
        required=True,
    )


def _mint_parameters(channel: Channel) -> tuple[dict[str, Any], ...]:
    return (
        _agent_id_parameter(channel),
        openapi.query(
            "scope", "what the stream socket may do", {"type": "string", "enum": ["", *sorted(SCOPES)]}
        ),
        openapi.query(
            "call_id",
            "a call to narrow the token to (empty: none)",
            {"type": "string", "pattern": "^(" + _CALL_ID.pattern[1:-1] + ")?$"},
        ),
        openapi.query(
            "metadata",
            f"a JSON object of at most {MAX_METADATA_BYTES} bytes, sealed into the token "
            "(secret API key only)",
        ),
        openapi.request_header("Origin", "the browser's origin; judged against the agent's allowed_origins"),
    )


def _minted_response(channel: Channel) -> dict[str, Any]:
    response = openapi.json_ok("A token", _MINTED_SCHEMA, _CORS_HEADERS)
    if channel is Channel.WEBRTC:  # the token's one use over HTTP (the others open WebSockets)
        response["links"] = {
            "OpenWebRtcSession": {
                "operationId": "post_webrtc_offer",
                "requestBody": {"type": "offer", "sdp": "v=0", "token": "$response.body#/token"},
                "description": "Present the token with an SDP offer",
            }
        }
    return response


def operations() -> list[openapi.Operation]:
    ops = []
    for channel in Channel:
        path = f"/{channel.value}/token"
        ops += [
            openapi.Operation(
                "get",
                path,
                f"Mint a single-use {channel.value} token",
                tag="tokens",
                description="With a secret API key (a backend), the agent must be one of the key's "
                "org's online agents, and `metadata` may be sealed. Without one (or with a "
                "publishable key), the `Origin` must match the agent's `allowed_origins`.",
                parameters=_mint_parameters(channel),
                ok={"200": _minted_response(channel)},
                errors=_MINT_ERRORS,
                security=openapi.OPTIONAL_KEY,
            ),
            openapi.Operation(
                "options",
                path,
                f"CORS preflight of the {channel.value} mint",
                tag="tokens",
                description="Judged against the agent named in the same query string.",
                parameters=(
                    _agent_id_parameter(channel),
                    openapi.request_header("Origin", "the browser's origin", required=True),
                ),
                ok={
                    "204": openapi.empty_ok(
                        "Allowed",
                        {
                            **_CORS_HEADERS,
                            **{name: openapi.header(value) for name, value in PREFLIGHT_HEADERS.items()},
                        },
                    )
                },
                errors=(*_PREFLIGHT_ERRORS, StoreUnavailable),
            ),
        ]
    return ops
