"""``GET /api/sdk/agent-info/{agent}``: what the VoiceWidget asks to draw its contact menu.

Answered for public agents only (those registered with ``allowed_origins``), and only with
channel types and numbers, never credentials.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.core.origins import origin_allowed
from server.core.slugs import agent_slug
from server.services.agents import patterns_of
from server.services.node import Node

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
