"""``GET /webrtc/ice-servers`` and ``POST /webrtc/offer`` (CONTRACT §3), plus a dev-only count.

CORS: both routes answer any origin, preflight included. Unlike the mint routes, there is
nothing here to judge an origin by: the preflight carries no token and no agent, and the
credential is the single-use token in the body.

The offer is checked in the order that spends the least on a bad request:
body → SDP shape → token signature/expiry/channel (no store) → a session slot reserved →
agent online → consume the token (one store round trip) → peer → answer → session admitted
(:mod:`server.services.admission`, shared with chat). The slot is held from the reservation
to the admission, so offers racing for the last one are refused before their tokens are spent
or a peer is built for them (issue 16); any failure releases it, and any failure after the peer
exists closes the peer before the error is answered.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.core.scopes import Access
from server.core.sessionconfig import (
    BROWSER_CONFIG_KEYS,
    MAX_OFFER_BYTES,
    MAX_SDP_CHARS,
    filter_config,
    merge_metadata,
    parse_offer,
)
from server.core.text import is_ascii_number
from server.core.tokens import MAX_TOKEN_LENGTH, Channel
from server.errors import (
    AgentNotOnline,
    BadRequest,
    CapacityExceeded,
    PayloadTooLarge,
    StoreUnavailable,
    TokenExpired,
    TokenInvalid,
    TokenSpent,
    TokenWrongChannel,
    VoiceError,
)
from server.log import event
from server.realtime.rtc import RtcEngine, RtcPeer, validate_offer
from server.realtime.webrtc_session import WebRtcSession
from server.services.admission import admit
from server.services.node import Node
from server.services.sessions import greeting_frame, greeting_of
from server.web import openapi
from server.web.errors import error_response

log = logging.getLogger("voice.webrtc")
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}


def install(app: Starlette, node: Node) -> RtcEngine:
    """Open this node's peer engine; the node closes every peer left when it shuts down."""
    engine = RtcEngine(node.settings.ice_servers, node.settings.rtc_host_addresses)
    app.state.rtc = engine
    node.on_shutdown.append(engine.aclose)
    return engine


def _cors(request: Request) -> dict[str, str]:
    origin = request.headers.get("origin")
    if origin is None:
        return {"Access-Control-Allow-Origin": "*"}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def _preflight(request: Request) -> Response:
    return Response(status_code=204, headers={**_cors(request), **PREFLIGHT_HEADERS})


async def ice_servers(request: Request) -> Response:
    if request.method == "OPTIONS":
        return _preflight(request)
    node: Node = request.app.state.node
    return JSONResponse({"iceServers": [dict(s) for s in node.settings.ice_servers]}, headers=_cors(request))


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and is_ascii_number(declared) and int(declared) > MAX_OFFER_BYTES:
        raise PayloadTooLarge(f"the offer body is larger than {MAX_OFFER_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_OFFER_BYTES:
            raise PayloadTooLarge(f"the offer body is larger than {MAX_OFFER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def offer(request: Request) -> Response:
    if request.method == "OPTIONS":
        return _preflight(request)
    node: Node = request.app.state.node
    engine: RtcEngine = request.app.state.rtc
    cors = _cors(request)
    try:
        session, peer = await _open_session(node, engine, await _body(request))
    except VoiceError as exc:
        return error_response(exc, cors)
    body = {"sdp": peer.answer_sdp, "type": "answer", "session_id": session.session_id, "pc_id": peer.pc_id}
    return JSONResponse(body, headers={**cors, "Cache-Control": "no-store"})


async def _open_session(node: Node, engine: RtcEngine, raw: bytes) -> tuple[WebRtcSession, RtcPeer]:
    request = parse_offer(raw)
    validate_offer(request.sdp)
    async with admit(node, request.token, Channel.WEBRTC) as (claims, reservation):
        config, dropped = filter_config(request.config)
        if dropped:
            # CONTRACT §3: a browser may not set the prompt, model, tools...; say so, never apply it.
            event(
                log,
                "browser config keys dropped",
                org_id=claims.org_id,
                agent_id=claims.agent_id,
                dropped=dropped,
            )
        session = WebRtcSession(
            claims.org_id,
            claims.agent_id,
            merge_metadata(request.metadata, claims.metadata),
            config,
            node.settings.rtc_connect_seconds,
        )
        session.access = Access.of(claims)
        record = await node.registry.find(claims.org_id, claims.agent_id)
        peer = await engine.answer(request.sdp, session)
        try:
            session.attach(peer)
            await node.sessions.start(session, reservation)
            greeting = greeting_of(record.config, config)
            if greeting is not None:  # spoken once the browser's channel opens
                await session.handle_command(greeting_frame(greeting))
        except BaseException:
            if session.manager is not None:
                await session.end("start_failed")
            else:
                await session.abort()
            raise
    event(log, "webrtc answered", call_id=session.call_id, pc_id=peer.pc_id)
    return session, peer


async def debug_sessions(request: Request) -> Response:
    """Live counts for tests and local debugging (dev mode only; 404 otherwise)."""
    node: Node = request.app.state.node
    if not node.settings.dev:
        raise HTTPException(404)
    engine: RtcEngine = request.app.state.rtc
    return JSONResponse(
        {
            "sessions": len(node.sessions),
            "by_transport": dict(node.sessions.count_by_transport()),
            "peers": engine.peer_count,
            "peers_built": engine.peers_built,
        }
    )


def routes() -> list[Route]:
    return [
        Route("/webrtc/ice-servers", ice_servers, methods=["GET", "OPTIONS"]),
        Route("/webrtc/offer", offer, methods=["POST", "OPTIONS"]),
        Route("/debug/sessions", debug_sessions, methods=["GET"]),
    ]


_CORS_HEADERS = {
    "Access-Control-Allow-Origin": openapi.header("the request's Origin, or `*` without one", required=True),
    "Vary": openapi.header("`Origin` when the request had one"),
}
_PREFLIGHT = openapi.empty_ok(
    "Allowed from any origin",
    {**_CORS_HEADERS, **{name: openapi.header(value) for name, value in PREFLIGHT_HEADERS.items()}},
)
_ICE_SERVER = {
    "type": "object",
    "required": ["urls"],
    "properties": {
        "urls": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "username": {"type": "string"},
        "credential": {"type": "string"},
    },
}
_OFFER_BODY = {
    "type": "object",
    "required": ["sdp", "type", "token"],
    "properties": {
        "sdp": {"type": "string", "minLength": 1, "maxLength": MAX_SDP_CHARS},
        "type": {"const": "offer"},
        "token": {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_LENGTH},
        "config": {
            "type": "object",
            "description": f"only {', '.join(sorted(BROWSER_CONFIG_KEYS))} are applied; the rest is dropped",
        },
        "metadata": {"type": "object", "description": "under the token's sealed metadata (sealed keys win)"},
    },
}
_ANSWER = {
    "type": "object",
    "required": ["sdp", "type", "session_id", "pc_id"],
    "properties": {
        "sdp": {"type": "string"},
        "type": {"const": "answer"},
        "session_id": {"type": "string"},
        "pc_id": {"type": "string"},
    },
}


def operations() -> list[openapi.Operation]:
    return [
        openapi.Operation(
            "get",
            "/webrtc/ice-servers",
            "The ICE servers a browser should use (VOICE_ICE_SERVERS)",
            tag="webrtc",
            ok={
                "200": openapi.json_ok(
                    "RTCIceServer list",
                    {
                        "type": "object",
                        "required": ["iceServers"],
                        "properties": {"iceServers": {"type": "array", "items": _ICE_SERVER}},
                    },
                    _CORS_HEADERS,
                )
            },
        ),
        openapi.Operation(
            "options", "/webrtc/ice-servers", "CORS preflight", tag="webrtc", ok={"204": _PREFLIGHT}
        ),
        openapi.Operation(
            "post",
            "/webrtc/offer",
            "Open a WebRTC session with a webrtc token (spends it)",
            tag="webrtc",
            description="The credential is the single-use token in the body.",
            body={
                "required": True,
                "description": f"at most {MAX_OFFER_BYTES} bytes",
                "content": {"application/json": {"schema": _OFFER_BODY}},
            },
            ok={"200": openapi.json_ok("The SDP answer", _ANSWER, _CORS_HEADERS)},
            errors=(
                BadRequest,
                TokenInvalid,
                TokenExpired,
                TokenWrongChannel,
                AgentNotOnline,
                TokenSpent,
                PayloadTooLarge,
                CapacityExceeded,
                StoreUnavailable,
            ),
        ),
        openapi.Operation("options", "/webrtc/offer", "CORS preflight", tag="webrtc", ok={"204": _PREFLIGHT}),
        openapi.Operation(
            "get",
            "/debug/sessions",
            "Live session and peer counts (dev mode only)",
            tag="debug",
            ok={"200": openapi.json_ok("Counts", {"type": "object"})},
            http_errors={404: "not_found"},
        ),
    ]
