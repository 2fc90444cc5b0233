"""The scope policy: what a token's sealed scope and call_id let its holder do (core/scopes.py)."""

from __future__ import annotations

import pytest

from server.core.scopes import OBSERVE, PARTICIPATE, SUPERVISE, Access, default_scope
from server.core.tokens import Channel, Claims
from server.errors import ScopeForbidden, TokenWrongCall


def claims(channel: Channel, scope: str | None = None, call_id: str | None = None) -> Claims:
    return Claims("jti", "acme", ("mara",), channel, 0.0, 60.0, scope=scope, call_id=call_id)


@pytest.mark.parametrize(
    ("channel", "scope"),
    [(Channel.CHAT, PARTICIPATE), (Channel.WEBRTC, PARTICIPATE), (Channel.STREAM, OBSERVE)],
)
def test_a_token_minted_without_a_scope_gets_its_channels_default(channel: Channel, scope: str) -> None:
    assert default_scope(channel) == scope
    assert Access.of(claims(channel)).scope == scope


def test_only_a_participant_sends_user_input() -> None:
    Access.of(claims(Channel.CHAT)).check_input("a chat message")
    Access.of(claims(Channel.CHAT, PARTICIPATE)).check_input("a chat message")
    for scope in (OBSERVE, SUPERVISE):
        access = Access.of(claims(Channel.CHAT, scope))
        assert not access.sends_input
        with pytest.raises(ScopeForbidden, match="participate") as caught:
            access.check_input("inject_text")
        assert caught.value.code == "scope_forbidden" and "inject_text" in caught.value.detail


def test_a_token_sealed_to_a_call_cannot_open_a_new_one() -> None:
    Access.of(claims(Channel.WEBRTC, OBSERVE)).check_new_call()
    with pytest.raises(TokenWrongCall) as caught:
        Access.of(claims(Channel.WEBRTC, call_id="wrt_abc")).check_new_call()
    assert caught.value.code == "token_wrong_call" and caught.value.status == 403
    assert "wrt_abc" in caught.value.detail


def test_a_call_id_narrows_what_a_token_sees() -> None:
    anywhere = Access.of(claims(Channel.STREAM))
    assert anywhere.sees_call("c1") and anywhere.sees_call("c2")
    narrowed = Access.of(claims(Channel.STREAM, call_id="c1"))
    assert narrowed.sees_call("c1") and not narrowed.sees_call("c2")


def test_only_supervise_may_use_the_control_verbs() -> None:
    Access.of(claims(Channel.STREAM, SUPERVISE)).check_supervise("say")
    for scope in (None, OBSERVE, PARTICIPATE):
        with pytest.raises(ScopeForbidden, match="supervise"):
            Access.of(claims(Channel.STREAM, scope)).check_supervise("hangup")
