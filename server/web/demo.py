"""``GET /demo``: a small self-contained browser client, served in dev mode only (404 otherwise).

The page and its script are package data (``server/web/static``); they load nothing from any
other host. Only the files listed in :data:`ASSETS` are served.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from server.services.node import Node
from server.web import openapi

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"demo.js": "text/javascript", "demo.css": "text/css"}
# Scripts and styles only from this server; fetches go to whatever voice server a token names.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' http: https: ws: wss:; media-src 'self' blob: mediastream:; "
    "base-uri 'none'; form-action 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _dev_only(request: Request) -> None:
    node: Node = request.app.state.node
    if not node.settings.dev:
        raise HTTPException(404)


async def page(request: Request) -> Response:
    _dev_only(request)
    return FileResponse(STATIC / "demo.html", media_type="text/html; charset=utf-8", headers=HEADERS)


async def asset(request: Request) -> Response:
    _dev_only(request)
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404)
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)


def routes() -> list[Route]:
    return [
        Route("/demo", page, methods=["GET"]),
        Route("/demo/{name}", asset, methods=["GET"]),
    ]


def operations() -> list[openapi.Operation]:
    return [
        openapi.Operation(
            "get",
            "/demo",
            "A small browser client (dev mode only)",
            tag="debug",
            ok={"200": openapi.typed_ok("The page", "text/html")},
            http_errors={404: "not_found"},
        ),
        openapi.Operation(
            "get",
            "/demo/{name}",
            "The demo page's script and style (dev mode only)",
            tag="debug",
            parameters=(
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": sorted(ASSETS)},
                },
            ),
            ok={
                "200": {
                    "description": "The file",
                    "content": {m: {"schema": {"type": "string"}} for m in sorted(set(ASSETS.values()))},
                }
            },
            http_errors={404: "not_found"},
        ),
    ]
