"""Pure ASGI middleware: path clean-up and one structured, redacted log line per request."""

from __future__ import annotations

import json
import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.logsink import AccessSink

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
    """One line per HTTP request / WebSocket session through the node's :class:`AccessSink`:
    method, path with the query redacted, status, the error body's ``code``, duration, client IP
    and request id. Logged while ``voice.access`` is enabled at INFO (``VOICE_LOG_LEVEL``)."""

    def __init__(self, app: ASGIApp, sink: AccessSink) -> None:
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        code: str | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, code
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.http.response.start":
                status = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close" and not status:
                status = 403
            elif status >= 400 and code is None and kind.endswith("response.body"):
                code = _error_code(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client")
            self.sink.line(
                "ws" if kind == "websocket" else "http",
                scope.get("method", "WS"),
                scope["path"],
                scope.get("query_string", b"").decode("latin-1"),
                status,
                code,
                time.perf_counter() - started,
                client[0] if client else None,
                self.sink.request_id(scope["headers"]),
            )


def _error_code(body: bytes) -> str | None:
    """The stable ``code`` of an error body (``{"detail", "code"}``, CONTRACT §1), if it has one."""
    if not body.startswith(b"{") or len(body) > 64 * 1024:
        return None
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) and len(code) <= 64 else None
