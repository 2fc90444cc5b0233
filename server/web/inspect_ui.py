"""``GET /_voice/ui``: the inspector page (issue 10 item 2), tokens, sessions with their timeline,
the live journal and active faults, read from the inspection API by a plain script.

Mounted with the API and only with it: with inspection off these paths are unknown routes (404
``not_found``) like the rest of ``/_voice/*``. The page and its two assets are package data
(``server/web/static``) holding no data at all; a browser cannot put a Bearer header on a page
load, so the shell itself needs no admin key, and every request the page makes for data goes to
the guarded API with the key typed into its field (``Authorization: Bearer``), refused 401/403
without it exactly as for any other client.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from server.web import openapi

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"inspector.js": "text/javascript", "inspector.css": "text/css"}
# Script, style and every fetch from this server only; no frame may embed the page.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "inspector.html", media_type="text/html; charset=utf-8", headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404)
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)


def routes() -> list[BaseRoute]:
    return [
        Route("/_voice/ui", page, methods=["GET"]),
        Route("/_voice/ui/{name}", asset, methods=["GET"]),
    ]


def operations() -> list[openapi.Operation]:
    description = (
        "Exists only when inspection is on (`VOICE_INSPECT`); needs no admin key, holds no data: "
        "the page asks the guarded API for it with the key typed into its field."
    )
    return [
        openapi.Operation(
            "get",
            "/_voice/ui",
            "The inspector page",
            tag="inspection",
            description=description,
            ok={"200": openapi.typed_ok("The page", "text/html")},
            http_errors={404: "not_found"},
        ),
        openapi.Operation(
            "get",
            "/_voice/ui/{name}",
            "The inspector page's script and style",
            tag="inspection",
            description=description,
            parameters=({"name": "name", "in": "path", "required": True, "schema": {"enum": list(ASSETS)}},),
            ok={
                "200": {
                    "description": "The asset",
                    "content": {media: {"schema": {"type": "string"}} for media in ASSETS.values()},
                }
            },
            http_errors={404: "not_found"},
        ),
    ]
