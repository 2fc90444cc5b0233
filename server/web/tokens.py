"""Mint routes: ``GET /webrtc/token``, ``/chat/token``, ``/stream/token`` (CONTRACT §1, §5).

Two ways in, and nothing else:
* a secret API key (``Authorization: Bearer sk_...``) names the org; the agent must be one
  of that org's online agents; only this path may seal ``metadata``;
* no key (or a publishable key, which only pins the org): the request's ``Origin`` must match
  the agent's ``allowed_origins``.

CORS headers go to matching origins only, always with ``Vary: Origin``; the preflight carries
the same query string and is judged against the same agent.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.core.apikeys import KeyKind, kind_of, parse_bearer
from server.core.clientip import client_ip
from server.core.origins import Origin, origin_allowed
from server.core.slugs import agent_slug
from server.core.tokens import Channel, parse_metadata, parse_scope
from server.errors import BadRequest, InvalidApiKey, NoCredential, OriginNotAllowed, RateLimited, VoiceError
from server.services.agents import patterns_of
from server.services.node import Node
from server.store.base import AgentRecord, Hit
from server.web.errors import error_response

MAX_STREAM_AGENTS = 16
_CALL_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


def _agent_ids(request: Request, channel: Channel) -> list[tuple[str, str]]:
    """(slug, as sent) for each requested agent; ``stream`` may name several, comma-joined."""
    raw = request.query_params.get("agent_id")
    if raw is None or not raw.strip():
        raise BadRequest("agent_id is required")
    parts = raw.split(",") if channel is Channel.STREAM else [raw]
    if len(parts) > MAX_STREAM_AGENTS:
        raise BadRequest(f"at most {MAX_STREAM_AGENTS} agents per stream token")
    if channel is not Channel.STREAM and "," in raw:
        raise BadRequest("agent_id names one agent (only /stream/token takes a comma-joined list)")
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


async def _public_records(node: Node, agents: list[tuple[str, str]], org_id: str | None) -> list[AgentRecord]:
    if org_id is not None:
        return [await node.registry.find(org_id, slug, shown_as=shown) for slug, shown in agents]
    return [await node.registry.find_public(slug, shown_as=shown) for slug, shown in agents]


def _cors(origin: Origin | None) -> dict[str, str]:
    headers = {"Vary": "Origin"}
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = str(origin)
    return headers


async def mint(request: Request, channel: Channel) -> Response:
    node: Node = request.app.state.node
    origin_header = request.headers.get("origin")
    cors_origin: Origin | None = None
    path = "key"
    try:
        agents = _agent_ids(request, channel)
        params = request.query_params
        scope = parse_scope(params.get("scope"))
        call_id = params.get("call_id") or None
        if call_id is not None and not _CALL_ID.match(call_id):
            raise BadRequest("call_id must be 1-128 characters of letters, digits and _ . : -")
        credential = parse_bearer(request.headers.get("authorization"))
        if credential == "":
            raise InvalidApiKey("Malformed Authorization header; expected 'Bearer <api key>'")
        settings = node.settings

        if credential is not None and kind_of(credential) is KeyKind.SECRET:
            key = await node.keys.authenticate(credential, KeyKind.SECRET)
            records = [await node.registry.find(key.org_id, slug, shown_as=shown) for slug, shown in agents]
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
            records = await _public_records(node, agents, publishable.org_id if publishable else None)
            cors_origin = _matching(records, origin_header)
            if cors_origin is None:
                raise OriginNotAllowed(f"Origin {origin_header[:200]!r} is not allowed for this agent")
            ip = client_ip(
                request.client.host if request.client else None,
                # Every X-Forwarded-For line, in order: a proxy that appends its own line
                # instead of merging must not let the client's forged first line decide.
                ",".join(request.headers.getlist("x-forwarded-for")) or None,
                settings.trusted_proxies,
            )
            hits = [Hit(f"o:{cors_origin}|{ip}", settings.rate_limit_public)]
            if publishable is not None:
                hits.append(Hit("k:" + publishable.key_id, settings.rate_limit_key))
            metadata = {}
            org_id = records[0].org_id

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
        if isinstance(exc, RateLimited):
            node.metrics.rate_limited.labels("key" if path == "key" else "public").inc()
        return error_response(exc, _cors(cors_origin))
    node.metrics.minted.labels(channel.value, path).inc()
    body = {
        "token": minted.token,
        "server": records[0].node_url,
        "expires_in": minted.expires_in,
        "expiresIn": minted.expires_in,
    }
    return JSONResponse(body, headers={**_cors(cors_origin), "Cache-Control": "no-store"})


async def preflight(request: Request, channel: Channel) -> Response:
    """CORS preflight of a mint: judged against the agent named in its query string."""
    node: Node = request.app.state.node
    origin_header = request.headers.get("origin")
    try:
        if origin_header is None:
            raise NoCredential("a CORS preflight needs an Origin header")
        records = await _public_records(node, _agent_ids(request, channel), None)
        origin = _matching(records, origin_header)
        if origin is None:
            raise OriginNotAllowed(f"Origin {origin_header[:200]!r} is not allowed for this agent")
    except VoiceError as exc:
        return error_response(exc, {"Vary": "Origin"})
    return Response(status_code=204, headers={**_cors(origin), **PREFLIGHT_HEADERS})


def routes() -> list[Route]:
    def endpoint(channel: Channel) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            if request.method == "OPTIONS":
                return await preflight(request, channel)
            return await mint(request, channel)

        return handle

    return [
        Route(
            f"/{channel.value}/token",
            endpoint(channel),
            methods=["GET", "OPTIONS"],
            name=f"mint_{channel.value}",
        )
        for channel in Channel
    ]
