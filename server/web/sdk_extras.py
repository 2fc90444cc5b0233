"""The rest of the hosted voice host's ``/api`` and ``/v1`` surface that the real clients call
(README, "Wire coverage"): what a mock can answer truthfully is answered, what needs a real
provider answers 501 ``not_supported`` naming it, never a bare 404.

* ``GET /api/sdk/phone-numbers`` (secret key): the numbers of the org's agents' ``phone``
  channels, in the shape ``fetchPhones`` maps. This server places no calls on them.
* ``GET /api/sdk/voices`` and ``GET /v1/audio/voices``: the one voice the mock speaks with
  (a synthetic voiced buzz of the right length per word, :mod:`server.realtime.media`).
* ``/api/memory/...`` (secret key): the memory API with nothing in it; no extractor runs here.
* ``POST /v1/audio/speech``, ``POST /v1/audio/transcriptions``, ``GET /api/sdk/twilio-balance``,
  ``GET /live/{call_id}/player``: 501. The WebSockets ``/v1/audio/transcriptions/stream`` and
  ``/live/{call_id}/ws`` refuse the handshake with the same 501 body; ``/api/scribe/ws`` (the
  web package's dictation, which reads an ``error`` event) accepts, sends one and closes.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from server.errors import InvalidApiKey, NotSupported, StoreUnavailable
from server.services.node import Node
from server.web import openapi
from server.web.agents import authenticated_org
from server.web.errors import error_response

_NO_STORE = {"Cache-Control": "no-store"}
MOCK_VOICE: dict[str, Any] = {
    "id": "mock",
    "voice_id": "mock",
    "name": "Mock voice",
    "alias": "mock",
    "provider": "mock",
    "gender": "neutral",
    "style": "synthetic",
    "languages": [{"code": "en", "name": "English"}],
    "description": "voice-server's built-in stand-in: a voiced buzz as long as the words take to say; no TTS",
}
_NEEDS = {
    "speech": "text-to-speech needs a TTS provider; this server only plays a synthetic stand-in voice",
    "transcription": "speech-to-text needs an STT provider, which this server does not have",
    "balance": "telephony balance needs a Twilio account, which this server does not have",
    "live": "live call audio exists only for bridged phone calls, which need a telephony provider",
    "scribe": "dictation needs speech-to-text from an STT provider, which this server does not have",
}


async def phone_numbers(request: Request) -> Response:
    node: Node = request.app.state.node
    org_id = await authenticated_org(node, request)
    phones = [
        {
            "number": ref,
            "name": str(channel.get("name") or ref),
            "sid": "",
            "isSdk": True,
            "agent": record.agent_id,
        }
        for record in await node.registry.online_in_org(org_id)
        for channel in record.channels.values()
        if channel.get("type") == "phone" and isinstance(ref := channel.get("ref"), str) and ref
    ]
    return JSONResponse({"success": True, "phones": phones}, headers=_NO_STORE)


async def voices(request: Request) -> Response:
    return JSONResponse({"success": True, "voices": [MOCK_VOICE]})


async def audio_voices(request: Request) -> Response:
    await authenticated_org(request.app.state.node, request)
    return JSONResponse({"success": True, "voices": [MOCK_VOICE]})


async def memory_search(request: Request) -> Response:
    await authenticated_org(request.app.state.node, request)
    return JSONResponse({"success": True, "hits": []}, headers=_NO_STORE)


async def memory_contact(request: Request) -> Response:
    await authenticated_org(request.app.state.node, request)
    contact = request.path_params["contact"]
    if request.method == "DELETE":
        return JSONResponse({"success": True, "forgotten": False}, headers=_NO_STORE)
    body = {"success": True, "contact": contact, "revision": 0, "facts": [], "memory_md": ""}
    return JSONResponse(body, headers=_NO_STORE)


def _refusal(need: str) -> Any:
    async def refuse(request: Request) -> Response:
        return error_response(NotSupported(_NEEDS[need]))

    return refuse


def _ws_refusal(need: str) -> Any:
    async def refuse(websocket: WebSocket) -> None:
        await websocket.send_denial_response(error_response(NotSupported(_NEEDS[need])))

    return refuse


async def scribe(websocket: WebSocket) -> None:
    await websocket.accept()
    refused = NotSupported(_NEEDS["scribe"])
    await websocket.send_json({"event": "error", "error": refused.detail, "code": refused.code})
    await websocket.close(refused.ws_close_code, refused.code)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/sdk/phone-numbers", phone_numbers, methods=["GET"]),
        Route("/api/sdk/voices", voices, methods=["GET"]),
        Route("/v1/audio/voices", audio_voices, methods=["GET"]),
        Route("/api/memory/search", memory_search, methods=["GET"]),
        Route("/api/memory/{agent}/{contact}", memory_contact, methods=["GET", "DELETE"]),
        Route("/v1/audio/speech", _refusal("speech"), methods=["POST"]),
        Route("/v1/audio/transcriptions", _refusal("transcription"), methods=["POST"]),
        Route("/api/sdk/twilio-balance", _refusal("balance"), methods=["GET"]),
        Route("/live/{call_id}/player", _refusal("live"), methods=["GET"]),
        WebSocketRoute("/v1/audio/transcriptions/stream", _ws_refusal("transcription")),
        WebSocketRoute("/live/{call_id}/ws", _ws_refusal("live")),
        WebSocketRoute("/api/scribe/ws", scribe),
    ]


_VOICE = {"type": "object", "required": ["id", "name", "provider"], "properties": {"id": {"type": "string"}}}
_VOICES = openapi.json_ok(
    "The mock voice",
    {
        "type": "object",
        "required": ["success", "voices"],
        "properties": {"success": {"const": True}, "voices": {"type": "array", "items": _VOICE}},
    },
)
_KEY_ERRORS = (InvalidApiKey, StoreUnavailable)


def _refused(method: str, path: str, need: str) -> openapi.Operation:
    return openapi.Operation(
        method,
        path,
        f"Not supported: {_NEEDS[need]}",
        tag="sdk extras",
        errors=(NotSupported,),
    )


def operations() -> list[openapi.Operation]:
    return [
        openapi.Operation(
            "get",
            "/api/sdk/phone-numbers",
            "The numbers of the org's agents' phone channels",
            tag="sdk extras",
            ok={
                "200": openapi.json_ok(
                    "The numbers",
                    {
                        "type": "object",
                        "required": ["success", "phones"],
                        "properties": {
                            "success": {"const": True},
                            "phones": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["number", "name", "sid", "isSdk", "agent"],
                                    "properties": {
                                        "number": {"type": "string"},
                                        "name": {"type": "string"},
                                        "sid": {"type": "string"},
                                        "isSdk": {"type": "boolean"},
                                        "agent": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                )
            },
            errors=_KEY_ERRORS,
            security=openapi.SECRET_KEY,
        ),
        openapi.Operation(
            "get",
            "/api/sdk/voices",
            "The one voice the mock speaks with",
            tag="sdk extras",
            ok={"200": _VOICES},
        ),
        openapi.Operation(
            "get",
            "/v1/audio/voices",
            "The one voice the mock speaks with",
            tag="sdk extras",
            ok={"200": _VOICES},
            errors=_KEY_ERRORS,
            security=openapi.SECRET_KEY,
        ),
        openapi.Operation(
            "get",
            "/api/memory/search",
            "Memory search: always empty (no extractor runs here)",
            tag="sdk extras",
            ok={
                "200": openapi.json_ok(
                    "No hits",
                    {
                        "type": "object",
                        "required": ["success", "hits"],
                        "properties": {"success": {"const": True}, "hits": {"type": "array", "maxItems": 0}},
                    },
                )
            },
            errors=_KEY_ERRORS,
            security=openapi.SECRET_KEY,
        ),
        openapi.Operation(
            "get",
            "/api/memory/{agent}/{contact}",
            "A contact's memory: always empty",
            tag="sdk extras",
            ok={
                "200": openapi.json_ok(
                    "Nothing remembered",
                    {
                        "type": "object",
                        "required": ["success", "contact", "revision", "facts", "memory_md"],
                        "properties": {
                            "success": {"const": True},
                            "contact": {"type": "string"},
                            "revision": {"type": "integer"},
                            "facts": {"type": "array"},
                            "memory_md": {"type": "string"},
                        },
                    },
                )
            },
            errors=_KEY_ERRORS,
            security=openapi.SECRET_KEY,
        ),
        openapi.Operation(
            "delete",
            "/api/memory/{agent}/{contact}",
            "Forget a contact: there is nothing to forget",
            tag="sdk extras",
            ok={
                "200": openapi.json_ok(
                    "Nothing forgotten",
                    {
                        "type": "object",
                        "required": ["success", "forgotten"],
                        "properties": {"success": {"const": True}, "forgotten": {"const": False}},
                    },
                )
            },
            errors=_KEY_ERRORS,
            security=openapi.SECRET_KEY,
        ),
        _refused("post", "/v1/audio/speech", "speech"),
        _refused("post", "/v1/audio/transcriptions", "transcription"),
        _refused("get", "/api/sdk/twilio-balance", "balance"),
        _refused("get", "/live/{call_id}/player", "live"),
    ]
