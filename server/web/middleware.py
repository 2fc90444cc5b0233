"""Pure ASGI middleware: path clean-up and one structured, redacted log line per request."""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.core.redaction import redact_text
from server.log import event

log = logging.getLogger("voice.access")
_SLASHES = re.compile(r"/{2,}")


class CleanPath:
    """Collapse ``//`` in paths: the SDK builds ``{apiUrl}/webrtc/token`` and an ``apiUrl`` with a
    trailing slash gives ``//webrtc/token``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "//" in scope["path"]:
            scope = dict(scope)
            scope["path"] = _SLASHES.sub("/", scope["path"])
            scope["raw_path"] = scope["path"].encode()
        await self.app(scope, receive, send)


class AccessLog:
    """One line per HTTP request / WebSocket session; the query string is redacted."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and not status:
                status = 403
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            path = scope["path"] + ("?" + redact_text(query) if query else "")
            client = scope.get("client")
            event(
                log,
                "ws" if scope["type"] == "websocket" else "http",
                method=scope.get("method", "WS"),
                path=path,
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                client=client[0] if client else None,
            )
