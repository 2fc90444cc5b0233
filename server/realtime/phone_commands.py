"""``/client`` phone commands: ``call.dial`` (simulated, services/dialer.py), and phone lines:
``line.create {number, config}`` and ``line.destroy {number}`` (pinecall/sdk src/domain/line.ts
``_register``/``destroy``, dispatch/handlers/line.ts).

A line is registered like an agent, under the id ``line:<number>`` the SDK routes its events
by, with a ``phone`` channel on the number: the number is then held by one line or agent at a
time, in any org, on every node, goes offline with its socket and is listed with the org's
numbers. The answers are what the SDK's LineHandler reads: ``line.created {number,
agent_id}`` (its ``ready`` resolves), ``line.error {number, code, error}`` with the SDK's codes
``LINE_CONFLICT`` and ``LINE_CONFIG_ERROR``, ``line.destroyed {number}``. No call ever rings on
it: there is no telephony (README, "Wire coverage").
"""

from __future__ import annotations

import re
from typing import Any

from server.core.slugs import agent_slug
from server.core.wire import Frame, error_frame
from server.errors import AgentInUse, CapacityExceeded, DialFailed, RegistrationError
from server.services.agents import AgentConnection
from server.services.node import Node

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
# A line has no model (pinecall/sdk src/domain/line.ts REFUSED_KEYS): its first words are code.
REFUSED_KEYS = ("llm", "prompt", "tools", "greeting")


def line_id(number: str) -> str:
    return "line:" + number


def _line_error(number: object, code: str, detail: str) -> dict[str, Any]:
    return {
        "event": "line.error",
        "number": number,
        "agent_id": line_id(number) if isinstance(number, str) else None,
        "code": code,
        "error": detail,
    }


async def line_create(node: Node, connection: AgentConnection, frame: Frame) -> None:
    number, config = frame.get("number"), frame.get("config", {})
    if not isinstance(number, str) or not E164.match(number):
        await connection.send(
            _line_error(number, "LINE_CONFIG_ERROR", "number must be E.164, e.g. +15550100")
        )
        return
    refused = [k for k in REFUSED_KEYS if isinstance(config, dict) and config.get(k) is not None]
    if not isinstance(config, dict) or refused:
        detail = (
            f"a line has no model: {', '.join(refused)} refused" if refused else "config must be an object"
        )
        await connection.send(_line_error(number, "LINE_CONFIG_ERROR", detail))
        return
    try:
        await node.registry.register(connection, line_id(number), config, None)
    except AgentInUse:
        node.registry.withdraw_pending(connection, line_id(number))
        await connection.send(
            _line_error(number, "LINE_CONFLICT", f"{number} is held by another live process")
        )
        return
    try:
        await node.registry.add_channel(connection, line_id(number), {"type": "phone", "ref": number})
    except RegistrationError as exc:
        await node.registry.unregister(connection, line_id(number))
        await connection.send(_line_error(number, "LINE_CONFLICT", exc.detail))
        return
    await connection.send({"event": "line.created", "number": number, "agent_id": line_id(number)})


async def line_destroy(node: Node, connection: AgentConnection, frame: Frame) -> None:
    number = frame.get("number")
    if (
        not isinstance(number, str)
        or node.registry.local_connection(connection.org_id, line_id(number)) is not connection
    ):
        await connection.send(
            _line_error(number, "LINE_CONFIG_ERROR", f"no line {number!r} on this connection")
        )
        return
    await node.registry.unregister(connection, line_id(number))
    await connection.send({"event": "line.destroyed", "number": number, "agent_id": line_id(number)})


async def call_dial(node: Node, connection: AgentConnection, frame: Frame) -> None:
    """``agent.dial({to, from})``. A refusal is ``call.error {error, code}``: the SDK turns it
    into the ``call.ended`` its ``dial()`` rejects on (dispatch/handlers/lifecycle.ts), where an
    ``error`` frame would only reach the client and leave ``dial()`` waiting 30 s."""
    raw = frame.get("agent_id")
    slug = agent_slug(raw)
    record = node.registry.owned(connection, slug)
    phones = [str(c["ref"]) for c in record.channels.values() if c.get("type") == "phone" and c.get("ref")]
    try:
        await node.dialer.dial(connection.org_id, slug, phones, frame)
    except (DialFailed, CapacityExceeded) as exc:
        refused = error_frame(exc.detail, exc.frame_code, agent_id=raw, to=frame.get("to"))
        await connection.send({**refused, "event": "call.error"})
