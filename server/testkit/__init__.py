"""The integration-test kit (issue 10): boot a real voice-server, drive it as an app would, read
back what it decided.

A pytest plugin (:mod:`server.testkit.plugin`, registered as a ``pytest11`` entry point, so
``pip install voice-server`` is all it takes) gives the fixtures ``voice_server`` and
``voice_agent``; the classes below work without pytest too::

    with VoiceServer.boot() as server:
        with server.agent("support") as agent:
            with agent.chat() as chat:
                assert chat.send("hi") == "You said: hi"

Nothing here is imported by the server itself; it sits above every other layer, like the CLI.
"""

from __future__ import annotations

from server.testkit.agent import ChatSession, SessionRefused, VoiceAgent
from server.testkit.inspector import InspectionUnavailable, Inspector, InspectorError
from server.testkit.process import VoiceServer, VoiceServerError

__all__ = [
    "ChatSession",
    "InspectionUnavailable",
    "Inspector",
    "InspectorError",
    "SessionRefused",
    "VoiceAgent",
    "VoiceServer",
    "VoiceServerError",
]
