"""The one place where errors become HTTP responses: ``{"detail", "code"}`` (CONTRACT §1)."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from server.errors import VoiceError

log = logging.getLogger("voice.http")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "payload_too_large"}


def error_response(exc: VoiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        exc.to_body(),
        status_code=exc.status,
        headers={**exc.headers(), **(headers or {}), "Cache-Control": "no-store"},
    )


async def on_voice_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VoiceError)
    return error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        {"detail": exc.detail, "code": code}, status_code=exc.status_code, headers=exc.headers
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal server error", "code": "internal_error"}, status_code=500)


async def unknown_websocket(websocket: WebSocket) -> None:
    """A WebSocket handshake on a path nothing serves: the same 404 body an unknown HTTP path
    gets (uvicorn sends it through the ASGI denial-response extension), not a bare 403."""
    body = {"detail": f"no WebSocket endpoint at {websocket.url.path}", "code": "not_found"}
    await websocket.send_denial_response(JSONResponse(body, status_code=404))
