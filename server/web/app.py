"""The application factory: ``create_app(settings)`` owns every resource through its lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute

from server.errors import VoiceError
from server.realtime.chat_ws import chat_endpoint
from server.realtime.client_ws import client_endpoint
from server.services.node import Node
from server.settings import Settings
from server.store import Store
from server.web import agents, demo, errors, health, tokens, webrtc_http, whatsapp
from server.web.middleware import AccessLog, CleanPath

log = logging.getLogger("voice.app")
Hook = Callable[[Node], Awaitable[None]]


def create_app(settings: Settings, store: Store | None = None, on_ready: Hook | None = None) -> Starlette:
    """Build the ASGI app. ``store`` injects a store (tests); ``on_ready`` runs after start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        node = await Node.open(settings, store)
        app.state.node = node
        webrtc_http.install(app, node)
        try:
            if on_ready is not None:
                await on_ready(node)
            yield
        finally:
            await node.aclose()

    routes: list[BaseRoute] = [
        *tokens.routes(),
        *webrtc_http.routes(),
        *demo.routes(),
        *whatsapp.routes(),
        WebSocketRoute("/client", client_endpoint),
        WebSocketRoute("/chat/ws", chat_endpoint),
        Route("/api/sdk/agent-info/{agent}", agents.agent_info),
        Route("/healthz", health.healthz),
        Route("/readyz", health.readyz),
        Route("/metrics", health.metrics),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(CleanPath), Middleware(AccessLog)],
        exception_handlers={
            VoiceError: errors.on_voice_error,
            HTTPException: errors.on_http_error,
            Exception: errors.on_unexpected,
        },
        lifespan=lifespan,
    )
