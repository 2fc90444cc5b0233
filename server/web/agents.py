"""The ``/api/sdk`` routes about agents.

* ``GET /api/sdk/agent-info/{agent}``: what the VoiceWidget asks to draw its contact menu.
  Answered for public agents only (those registered with ``allowed_origins``), and only with
  channel types and numbers, never credentials.
* ``GET /api/sdk/agents`` (secret API key): the key's org's online agents on every node, in
  the shape ``pinecall agents`` reads; channel types, counts and refs only, never credentials.
* ``DELETE /api/sdk/agents/{slug}`` (secret API key): take one of the org's agents offline
  wherever its ``/client`` socket is (:mod:`server.services.displace`). Another org's agent
  answers 404 exactly like an unknown one.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.core.apikeys import KeyKind, kind_of, parse_bearer
from server.core.origins import origin_allowed
from server.core.slugs import agent_slug
from server.errors import AgentNotOnline, BadRequest, InvalidApiKey, StoreUnavailable
from server.services import displace
from server.services.agents import patterns_of
from server.services.node import Node
from server.store.base import AgentRecord
from server.web import openapi

_NUMBERED = ("phone", "whatsapp", "sms")


async def agent_info(request: Request) -> Response:
    node: Node = request.app.state.node
    shown = request.path_params["agent"]
    record = await node.registry.find_public(agent_slug(shown), shown_as=shown)
    channels: list[dict[str, Any]] = []
    for channel in record.channels.values():
        entry: dict[str, Any] = {"type": channel["type"]}
        number = channel.get("phone") or channel.get("number") or channel.get("ref")
        if channel["type"] in _NUMBERED and isinstance(number, str):
            entry["numbers"] = [number]
            entry["phone"] = number
        channels.append(entry)
    headers = {"Vary": "Origin"}
    origin = origin_allowed(patterns_of(record.allowed_origins), request.headers.get("origin"))
    if origin is not None:
        headers["Access-Control-Allow-Origin"] = str(origin)
    return JSONResponse({"agent": record.agent_id, "channels": channels}, headers=headers)


_NO_STORE = {"Cache-Control": "no-store"}


async def authenticated_org(node: Node, request: Request) -> str:
    """The org of the request's secret API key, checked as the mint's backend path checks it."""
    credential = parse_bearer(request.headers.get("authorization"))
    if credential is None:
        raise InvalidApiKey("This route needs a secret API key: 'Authorization: Bearer <api key>'")
    if credential == "":
        raise InvalidApiKey("Malformed Authorization header; expected 'Bearer <api key>'")
    if kind_of(credential) is KeyKind.PUBLISHABLE:
        raise InvalidApiKey("A publishable key cannot call this route; use a secret API key")
    key = await node.keys.authenticate(credential, KeyKind.SECRET)
    return key.org_id


def _listed(record: AgentRecord) -> dict[str, Any]:
    """One agent as ``pinecall agents`` reads it. Built field by field from an allowlist: the
    stored channel frames hold WhatsApp credentials (accessToken, appSecret, verifyToken)."""
    channels: dict[str, dict[str, Any]] = {}
    for channel in record.channels.values():
        entry = channels.setdefault(str(channel["type"]), {"count": 0, "refs": []})
        entry["count"] += 1
        ref = channel.get("ref")
        if isinstance(ref, str) and ref:
            entry["refs"].append(ref)
    phones = list(channels.get("phone", {}).get("refs", []))
    return {
        "slug": record.agent_id,
        "org_id": record.org_id,
        "phones": phones,
        "channels": channels,
        "active": True,
    }


async def list_agents(request: Request) -> Response:
    node: Node = request.app.state.node
    org_id = await authenticated_org(node, request)
    agents = [_listed(record) for record in await node.registry.online_in_org(org_id)]
    phone_map = {phone: agent["slug"] for agent in agents for phone in agent["phones"]}
    body = {
        "success": True,
        "agents": agents,
        "total": len(agents),
        "phone_map": phone_map,
        "dev_overrides": None,
    }
    return JSONResponse(body, headers=_NO_STORE)


async def delete_agent(request: Request) -> Response:
    node: Node = request.app.state.node
    org_id = await authenticated_org(node, request)
    shown = request.path_params["slug"]
    slug = agent_slug(shown)
    if not await displace.displace(node, org_id, slug):
        raise AgentNotOnline(shown)
    return JSONResponse({"success": True, "displaced": slug, "org_id": org_id}, headers=_NO_STORE)


def routes() -> list[Route]:
    return [
        Route("/api/sdk/agent-info/{agent}", agent_info, methods=["GET"]),
        Route("/api/sdk/agents", list_agents, methods=["GET"]),
        Route("/api/sdk/agents/{slug}", delete_agent, methods=["DELETE"]),
    ]


_CHANNEL_COUNT = {
    "type": "object",
    "required": ["count", "refs"],
    "properties": {"count": {"type": "integer"}, "refs": {"type": "array", "items": {"type": "string"}}},
}
_LISTED = {
    "type": "object",
    "required": ["slug", "org_id", "phones", "channels", "active"],
    "properties": {
        "slug": {"type": "string"},
        "org_id": {"type": "string"},
        "phones": {"type": "array", "items": {"type": "string"}},
        "channels": {"type": "object", "additionalProperties": _CHANNEL_COUNT},
        "active": {"type": "boolean"},
    },
}
_KEY_ERRORS = (InvalidApiKey, StoreUnavailable)


def operations() -> list[openapi.Operation]:
    return [
        openapi.Operation(
            "get",
            "/api/sdk/agent-info/{agent}",
            "A public agent's channel types and numbers (the VoiceWidget's contact menu)",
            tag="agents",
            parameters=(
                openapi.request_header("Origin", "answered with CORS when it matches allowed_origins"),
            ),
            ok={
                "200": openapi.json_ok(
                    "The agent",
                    {
                        "type": "object",
                        "required": ["agent", "channels"],
                        "properties": {
                            "agent": {"type": "string"},
                            "channels": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["type"],
                                    "properties": {
                                        "type": {"type": "string"},
                                        "numbers": {"type": "array", "items": {"type": "string"}},
                                        "phone": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                    {"Vary": openapi.header("always `Origin`", required=True)},
                )
            },
            errors=(BadRequest, AgentNotOnline, StoreUnavailable),
        ),
        openapi.Operation(
            "get",
            "/api/sdk/agents",
            "The key's org's online agents on every node (`pinecall agents`)",
            tag="agents",
            ok={
                "200": openapi.json_ok(
                    "The agents",
                    {
                        "type": "object",
                        "required": ["success", "agents", "total", "phone_map", "dev_overrides"],
                        "properties": {
                            "success": {"const": True},
                            "agents": {"type": "array", "items": _LISTED},
                            "total": {"type": "integer", "minimum": 0},
                            "phone_map": {"type": "object", "additionalProperties": {"type": "string"}},
                            "dev_overrides": {"type": "null"},
                        },
                    },
                )
            },
            errors=_KEY_ERRORS,
            security=openapi.SECRET_KEY,
        ),
        openapi.Operation(
            "delete",
            "/api/sdk/agents/{slug}",
            "Take one of the org's agents offline wherever its /client socket is",
            tag="agents",
            ok={
                "200": openapi.json_ok(
                    "Displaced",
                    {
                        "type": "object",
                        "required": ["success", "displaced", "org_id"],
                        "properties": {
                            "success": {"const": True},
                            "displaced": {"type": "string"},
                            "org_id": {"type": "string"},
                        },
                    },
                )
            },
            errors=(BadRequest, *_KEY_ERRORS, AgentNotOnline),
            security=openapi.SECRET_KEY,
        ),
    ]
