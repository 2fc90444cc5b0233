"""What a token's sealed ``scope`` and ``call_id`` let its holder do: the one policy for every
socket that presents a token (CONTRACT §1; the SDK's ``TokenScope``, pinecall/sdk api/tokens.ts):

* ``observe``: read-only. It sees, it never speaks: on a chat or WebRTC session it receives
  what the agent says but sends no user input (no chat ``message``, no ``inject_text``, no
  ``set_context``, no microphone), each refused with ``scope_forbidden``.
* ``participate``: a user in the conversation (media + log). What a chat or WebRTC token is
  when minted without a scope (the SDK: "what today's webrtc/chat tokens already are").
* ``supervise``: observe plus the control verbs (``say``, ``whisper``, ``hangup``), which live
  on ``/ws/stream``; on a chat or WebRTC session it is receive-only like ``observe``.

A stream token without a scope is ``observe``. A ``call_id`` narrows a token to that one call:
a stream sees that call only, and a chat or WebRTC token, whose session always opens a *new*
call, is refused (``token_wrong_call``) rather than opening a call other than the one sealed.
Pure: no I/O, only the token claims in and a decision (or a :class:`VoiceError`) out.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core.tokens import Channel, Claims
from server.errors import ScopeForbidden, TokenWrongCall

OBSERVE, PARTICIPATE, SUPERVISE = "observe", "participate", "supervise"
SUPERVISE_ACTIONS = frozenset({"say", "whisper", "hangup"})


def default_scope(channel: Channel) -> str:
    """The scope of a token minted without one: a stream watches, a chat or WebRTC session talks."""
    return OBSERVE if channel is Channel.STREAM else PARTICIPATE


@dataclass(frozen=True, slots=True)
class Access:
    scope: str
    call_id: str | None = None  # the one call this token may reach, when sealed

    @classmethod
    def of(cls, claims: Claims) -> Access:
        return cls(claims.scope or default_scope(claims.channel), claims.call_id)

    @property
    def sends_input(self) -> bool:
        """May speak or type into the conversation as its user."""
        return self.scope == PARTICIPATE

    def check_new_call(self) -> None:
        """A chat or WebRTC session is about to open a new call for this token."""
        if self.call_id is not None:
            raise TokenWrongCall(
                f"this token is sealed to call {self.call_id!r} and may reach only that call; "
                "a chat or WebRTC session opens a new one (watch a live call with a stream token)"
            )

    def check_input(self, what: str) -> None:
        """The holder sends user input (``what`` names it in the error)."""
        if not self.sends_input:
            raise ScopeForbidden(
                f"{what} needs a token of scope 'participate'; this one is {self.scope!r}: it only receives"
            )

    def check_supervise(self, action: str) -> None:
        if self.scope != SUPERVISE:
            raise ScopeForbidden(
                f"{action!r} needs a token of scope 'supervise' (this one is {self.scope!r})"
            )

    def sees_call(self, call_id: str) -> bool:
        return self.call_id is None or self.call_id == call_id
