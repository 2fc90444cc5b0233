"""Admitting a session that presents a single-use token (chat, WebRTC): one order for both.

verify the token by arithmetic (forged, expired, wrong channel, sealed to another call:
nothing held, nothing spent) →
reserve a session slot for its org (no room: refused before the consume) → the agent is online
on some node → consume the token (the one store round trip that decides single use, CONTRACT §2).

The slot stays held while the caller builds its session (a thread's history, a peer and its
answer) and is turned into the live session by ``node.sessions.start(session, reservation)``;
leaving the block any other way (an error, a cancelled task) releases it. Holding it across the
slow steps is what keeps two sessions racing for the last slot from both passing the check, and
the loser then being refused after its token was spent (issue 16).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import NamedTuple

from server.core.scopes import Access
from server.core.tokens import Channel, Claims
from server.errors import AgentNotOnline, VoiceError
from server.services.node import Node
from server.services.sessions import Reservation
from server.store.base import AgentRecord, agent_key


class Admission(NamedTuple):
    claims: Claims  # of the consumed token
    reservation: Reservation  # pass to ``node.sessions.start``


@contextlib.asynccontextmanager
async def admit(node: Node, token: str, channel: Channel) -> AsyncIterator[Admission]:
    """Check, reserve, consume (module docstring); the slot is held until the block ends."""
    claims = node.authority.verify(token, channel)
    Access.of(claims).check_new_call()  # a token sealed to another call: refused, nothing spent
    try:
        reservation = node.sessions.reserve(claims.org_id)
    except VoiceError as exc:  # no room: refused before the consume (the token is not spent)
        _refused(node, exc, channel)
        raise
    with reservation, node.sessions.admitting(claims.org_id, claims.agent_id):
        # Online on any node: frames reach an agent on another node through the relay (CONTRACT §8).
        # One moving off a draining node is waited for (services/handoff.py).
        key = agent_key(claims.org_id, claims.agent_id)

        async def lookup() -> AgentRecord:
            record = await node.registry.find(claims.org_id, claims.agent_id)
            if node.left_here(record):
                raise AgentNotOnline(claims.agent_id)  # let go by this draining node: moving
            return record

        try:
            await node.handoff.find(key, lookup, functools.partial(node.registry.forget_cached, key))
        except VoiceError as exc:
            _refused(node, exc, channel)
            raise
        consumed = await node.authority.spend(claims, channel, journaled=False)
        reservation.consumed = (consumed.jti, channel.value)  # journaled by the session's start
        yield Admission(consumed, reservation)


def _refused(node: Node, exc: VoiceError, channel: Channel) -> None:
    """A refusal before the consume is a refused consume too, for the journal."""
    if node.journal is not None:
        node.journal.note("consume.refused", code=exc.code, channel=channel.value)
