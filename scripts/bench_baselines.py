"""The naive endpoints ``scripts/bench`` measures our server against (issue 6, rows a, b, e1).

Written the way a user would in ten minutes: starlette routes, one redis.asyncio client, one
command per request and nothing else (no auth, no signing, no rate limits, no logging of our
own). Served by the same server and settings as ours (``scripts/bench`` starts it).

* ``GET /bare``                   → ``{"ok": true}``: the cost of the HTTP stack alone (row a);
* ``GET /naive/token``            → one ``SET tok:<id> 1 EX 60``, returns the id (row b1);
* ``GET /naive/redeem?token=<id>``→ one ``GETDEL tok:<id>`` (row b2). Always 200 with
  ``{"valid": bool}``: under wrk every request after the first redeems a spent id, which costs
  Redis the same single command, and the error column stays meaningful;
* ``WS /naive/ws?token=<id>``     → accept, one ``GETDEL``, then ``{"event": "connected"}``
  or a 1008 close; waits for the client to close (row e1);
* ``WS /floor/ws``                 → the WebSocket floor (row e0): raw ASGI in front of the
  app, accept, ``{"event": "connected"}``, wait for the close; no framework, no Redis. What any
  consume path on this server pays per session before doing anything of its own.

The Redis URL comes from ``BENCH_REDIS_URL``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

TTL_SECONDS = 60


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.redis = Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        yield
    finally:
        await app.state.redis.aclose()


async def bare(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def naive_token(request: Request) -> JSONResponse:
    token = secrets.token_urlsafe(16)
    await request.app.state.redis.set(f"tok:{token}", 1, ex=TTL_SECONDS)
    return JSONResponse({"token": token, "expires_in": TTL_SECONDS})


async def naive_redeem(request: Request) -> JSONResponse:
    token = request.query_params.get("token", "")
    value = await request.app.state.redis.getdel(f"tok:{token}")
    return JSONResponse({"valid": value is not None})


async def naive_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    token = websocket.query_params.get("token", "")
    if await websocket.app.state.redis.getdel(f"tok:{token}") is None:
        await websocket.close(1008, "token_spent")
        return
    await websocket.send_json({"event": "connected"})
    with contextlib.suppress(WebSocketDisconnect):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


routes = Starlette(
    routes=[
        Route("/bare", bare),
        Route("/naive/token", naive_token),
        Route("/naive/redeem", naive_redeem),
        WebSocketRoute("/naive/ws", naive_ws),
    ],
    lifespan=lifespan,
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket" and scope["path"] == "/floor/ws":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '{"event":"connected"}'})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    await routes(scope, receive, send)
