"""The application factory: ``create_app(settings)`` owns every resource through its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import VoiceError
from server.logsink import AccessSink
from server.realtime.chat_ws import chat_asgi, chat_endpoint
from server.realtime.client_ws import client_endpoint
from server.realtime.stream_ws import stream_endpoint
from server.services import control, displace
from server.services.node import Node
from server.settings import Settings
from server.store import Store
from server.web import (
    agents,
    demo,
    errors,
    health,
    inspect,
    inspect_ui,
    openapi,
    sdk_extras,
    tokens,
    webrtc_http,
    whatsapp,
)
from server.web.middleware import AccessLog, CleanPath
from server.web.middleware import log as access_log

log = logging.getLogger("voice.app")
Hook = Callable[[Node], Awaitable[None]]
FAST_METHODS = ("GET", "OPTIONS")
GC_YOUNG_THRESHOLD = 10_000


def create_app(settings: Settings, store: Store | None = None, on_ready: Hook | None = None) -> Starlette:
    """Build the ASGI app. ``store`` injects a store (tests); ``on_ready`` runs after start-up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        node = await Node.open(settings, store)
        app.state.node = node
        webrtc_http.install(app, node)
        displace.install(node)
        if settings.inspect:
            control.install(node)
            await control.load_clock(node)  # a node started after a clock advance keeps to it
            if node.faults is not None:
                await node.faults.reload()
        try:
            if on_ready is not None:
                await on_ready(node)
            # What exists after start-up (modules, the node, its caches) lives as long as the
            # process: out of the collector's sight, a full collection stops walking it. Under
            # load this took the mint's p99 from ~25 ms to ~8 ms (scripts/bench).
            gc.collect()
            gc.freeze()
            # With 50 requests in flight their live objects alone passed the default 700 and set
            # off a young collection every few requests (2,150 in an 8 s wrk run on the mint, ~2 µs
            # a request); at 10,000 there was one. Cycles still get collected, a little later.
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            yield
        finally:
            await _close(node)
            sink.close()  # after the last request: uvicorn's SIGTERM path ends here

    sink = AccessSink(settings.log_format, settings.log_flush_seconds)
    routes: list[BaseRoute] = [
        *tokens.routes(),  # also served from VoiceApp's fast lane
        *webrtc_http.routes(),
        *demo.routes(),
        *whatsapp.routes(),
        WebSocketRoute("/client", client_endpoint),
        WebSocketRoute("/chat/ws", chat_endpoint),
        WebSocketRoute("/ws/stream", stream_endpoint),
        *agents.routes(),
        *sdk_extras.routes(),
        *health.routes(),
        *openapi.routes(openapi.document(operations(settings.inspect))),
        *(inspect.routes() if settings.inspect else []),  # off: /_voice/* is an unknown route
        *(inspect_ui.routes() if settings.inspect else []),  # the page at /_voice/ui, with the API
        WebSocketRoute("/{path:path}", errors.unknown_websocket),  # last: what no route above serves
    ]
    return VoiceApp(
        fast_lane={**tokens.fast_lane(), ("websocket", "/chat/ws"): chat_asgi},
        routes=routes,
        middleware=[Middleware(CleanPath), Middleware(AccessLog, sink=sink)],
        access_sink=sink,
        exception_handlers={
            VoiceError: errors.on_voice_error,
            HTTPException: errors.on_http_error,
            Exception: errors.on_unexpected,
        },
        lifespan=lifespan,
    )


def operations(inspect_on: bool = True) -> list[openapi.Operation]:
    """Every HTTP operation, in route order: what ``/openapi.json`` describes (server/web/openapi.py
    says how a new route module adds its own). ``inspect_on``: with the ``/_voice/*`` routes, as a
    node with ``VOICE_INSPECT`` on mounts them (and ``docs/openapi.json`` shows them)."""
    return [
        *tokens.operations(),
        *webrtc_http.operations(),
        *demo.operations(),
        *whatsapp.operations(),
        *agents.operations(),
        *sdk_extras.operations(),
        *health.operations(),
        *openapi.operations(),
        *(inspect.operations() if inspect_on else []),
        *(inspect_ui.operations() if inspect_on else []),
    ]


CLOSE_SECONDS = 10.0


async def _close(node: Node) -> None:
    """Close the node, bounded: a shutdown that cannot finish says what it waits on and lets the
    process exit rather than hang past its supervisor's kill timeout."""
    try:
        await asyncio.wait_for(node.aclose(), CLOSE_SECONDS)
    except TimeoutError:
        stuck = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        log.error(
            "node shutdown did not finish in %.0fs; still running: %s",
            CLOSE_SECONDS,
            "; ".join(f"{t.get_name()} at {_where(t)}" for t in stuck),
        )


def _where(task: asyncio.Task[Any]) -> str:
    frames = task.get_stack(limit=1)
    if not frames:
        return "?"
    code = frames[-1].f_code
    return f"{code.co_filename.rsplit('/', 2)[-1]}:{frames[-1].f_lineno} {code.co_name}"


class VoiceApp(Starlette):
    """Starlette with a fast lane for the routes on every page load and session start of every
    customer's app (the mint routes, ``/chat/ws``): ``GET``/``OPTIONS``/WebSocket on their exact
    paths go straight to the endpoint (behind the access log), past the router and the middleware
    stack, which ``scripts/bench`` measured at ~20 µs of a ~150 µs mint and ~60 µs of a chat
    session. The endpoints answer their own errors, so nothing changes on the wire; any other
    request (``//webrtc/token``, ``HEAD``, ``POST``...) takes the normal way.
    """

    def __init__(
        self, *, fast_lane: Mapping[tuple[str, str], ASGIApp], access_sink: AccessSink, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._fast_lane = dict(fast_lane)
        self._logged_lane = {path: AccessLog(endpoint, access_sink) for path, endpoint in fast_lane.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" or (kind == "http" and scope["method"] in FAST_METHODS):
            lane = self._logged_lane if access_log.isEnabledFor(logging.INFO) else self._fast_lane
            endpoint = lane.get((kind, scope["path"]))
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
