"""An ASGI entry point for running our server under another ASGI server (issue 6, item 3).

``voice-server serve`` runs uvicorn itself; to measure granian on the same app, ``scripts/bench``
starts ``granian --interface asgi --factory scripts.asgi_entry:create`` with the same ``VOICE_*``
environment. This builds the app exactly as ``serve`` does (settings read once, logging set up),
minus the uvicorn-specific options that have no granian equivalent here: the WebSocket frame
limit (``ws_max_size``), ping interval and graceful-shutdown timeout.
"""

from __future__ import annotations

from starlette.applications import Starlette

from server import log as logsetup
from server.settings import Settings
from server.web.app import create_app


def create() -> Starlette:
    settings = Settings.from_env()
    logsetup.setup(settings.log_level, settings.log_format)
    return create_app(settings)
