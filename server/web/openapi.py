"""The OpenAPI 3.1 document of every HTTP route (``GET /openapi.json``) and the page that shows it
(``GET /docs``, plain HTML and JS from the package, nothing from another host).

One source of truth: each route module describes its own operations next to its routes, as an
``operations()`` function returning :class:`Operation` values, and :func:`document` assembles
them in route order. Error responses are never written by hand: an operation lists the
:mod:`server.errors` classes it can raise, and each status becomes one response whose body
schema is ``{"detail", "code"}`` with ``code`` one of those classes' codes (CONTRACT §1).

Adding a route module::

    # server/web/things.py, next to its routes()
    def operations() -> list[Operation]:
        return [
            Operation(
                "get", "/things", "The key's things", tag="things",
                ok={"200": json_ok("The things", {"type": "object"})},
                errors=(InvalidApiKey, StoreUnavailable),
                security=SECRET_KEY,
            ),
        ]

then add ``*things.operations()`` to :func:`server.web.app.operations` (next to where
``create_app`` lists ``*things.routes()``, under the same condition when the routes are mounted
only with some setting, as the ``/_voice/*`` inspection routes are) and run ``scripts/openapi`` to
rewrite ``docs/openapi.json`` (written with every operation, inspection included). The helpers
here (:func:`json_ok`, :func:`query`, :func:`header`...) build the pieces; an error class's status
and code come from :mod:`server.errors` itself. ``tests/web/test_openapi.py`` fails while an HTTP
route has no operation (or an operation no route), with inspection on or off, and while the
committed file differs from what a server with inspection on serves.

WebSocket routes (``/client``, ``/chat/ws``, ``/ws/stream``...) are outside what OpenAPI
describes; the README's wire section covers them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from server.errors import NotSupported, RateLimited, StoreUnavailable, VoiceError

STATIC = Path(__file__).resolve().parent / "static"
Schema = dict[str, Any]

# Who may call an operation: each entry of an OpenAPI ``security`` list is one way in.
NO_AUTH: tuple[str, ...] = ()
SECRET_KEY = ("secretKey",)
OPTIONAL_KEY = ("", "secretKey")  # "" = no credential at all (the browser's Origin path)
ADMIN_KEY = ("adminKey", "")  # "" = dev mode with no VOICE_ADMIN_KEYS set
SECURITY_SCHEMES: dict[str, Schema] = {
    "secretKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `sk_...` (secret, from a backend) or, on the mints, `pk_...` "
        "(publishable, pins the org of a browser mint).",
    },
    "adminKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "One of `VOICE_ADMIN_KEYS`, for the inspection API (`/_voice/*`): required "
        "outside dev mode and whenever the setting is given; in dev mode without it, no credential. "
        "Missing: 401 `admin_key_required`; not one of them: 403 `invalid_admin_key`.",
    },
}
# Shown with the tag in the document; a tag not named here has no description.
TAG_DESCRIPTIONS = {
    "inspection": "The inspection API and its page (`/_voice/*`). These routes exist only when "
    "inspection is on (`VOICE_INSPECT`, default on in dev mode, off elsewhere): off, they answer "
    "404 `not_found` like any unknown route, and the document a server serves leaves them out.",
}
ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
}


@dataclass(frozen=True)
class Operation:
    """One method on one path, as the OpenAPI document shows it.

    ``path`` is the route's path (Starlette's ``{name}`` parameters are OpenAPI's); ``ok`` maps
    each non-error status to its response object; ``errors`` are the :mod:`server.errors`
    classes the operation can answer with; ``http_errors`` the statuses Starlette itself answers
    (404 ``not_found`` for the dev-only routes outside dev mode).
    """

    method: str
    path: str
    summary: str
    tag: str
    description: str = ""
    parameters: tuple[Schema, ...] = ()
    body: Schema | None = None
    ok: Mapping[str, Schema] = field(default_factory=dict)
    errors: tuple[type[VoiceError], ...] = ()
    http_errors: Mapping[int, str] = field(default_factory=dict)
    security: tuple[str, ...] = NO_AUTH

    def to_openapi(self) -> Schema:
        op: Schema = {
            "operationId": _operation_id(self.method, self.path),
            "summary": self.summary,
            "tags": [self.tag],
        }
        if self.description:
            op["description"] = self.description
        if self.parameters:
            op["parameters"] = [*self.parameters, *_path_parameters(self.path, self.parameters)]
        elif "{" in self.path:
            op["parameters"] = _path_parameters(self.path, ())
        if self.body is not None:
            op["requestBody"] = self.body
        op["security"] = [{name: []} if name else {} for name in self.security] if self.security else []
        op["responses"] = {**self.ok, **_error_responses(self.errors, self.http_errors)}
        return op


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}").replace("-", "_").replace(".", "_") for w in path.split("/") if w]
    return "_".join([method, *words]) if words else method + "_root"


def _path_parameters(path: str, given: Iterable[Schema]) -> list[Schema]:
    named = {p["name"] for p in given if p.get("in") == "path"}
    return [
        {"name": w[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for w in path.split("/")
        if w.startswith("{") and w[1:-1] not in named
    ]


def _error_responses(errors: Iterable[type[VoiceError]], http_errors: Mapping[int, str]) -> dict[str, Schema]:
    by_status: dict[int, list[type[VoiceError]]] = {}
    for cls in errors:
        by_status.setdefault(cls.status, []).append(cls)
    statuses = sorted({*by_status, *http_errors})
    responses: dict[str, Schema] = {}
    for status in statuses:
        classes = by_status.get(status, [])
        codes = sorted(
            {c.code for c in classes} | ({http_errors[status]} if status in http_errors else set())
        )
        schema: Schema = {
            **ERROR_SCHEMA,
            "properties": {**ERROR_SCHEMA["properties"], "code": {"type": "string", "enum": codes}},
        }
        if any(issubclass(c, NotSupported) for c in classes):
            schema["properties"]["error"] = {"type": "string", "description": "the same as detail"}
        response: Schema = {
            "description": "; ".join(f"`{code}`" for code in codes),
            "content": {"application/json": {"schema": schema}},
        }
        if any(issubclass(c, (RateLimited, StoreUnavailable)) for c in classes):
            response["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait (429 `rate_limited`, 503 `store_unavailable`)",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            }
        responses[str(status)] = response
    return responses


def json_ok(description: str, schema: Schema, headers: Mapping[str, Schema] | None = None) -> Schema:
    """A JSON success response."""
    response: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = dict(headers)
    return response


def typed_ok(description: str, media_type: str, schema: Schema | None = None) -> Schema:
    """A success response of another media type (HTML, text, Prometheus exposition)."""
    return {"description": description, "content": {media_type: {"schema": schema or {"type": "string"}}}}


def empty_ok(description: str, headers: Mapping[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description}
    if headers:
        response["headers"] = dict(headers)
    return response


def header(description: str, required: bool = False) -> Schema:
    return {"description": description, "required": required, "schema": {"type": "string"}}


def query(name: str, description: str, schema: Schema | None = None, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def request_header(name: str, description: str, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def document(operations: Iterable[Operation]) -> Schema:
    """The whole OpenAPI 3.1 document of ``operations``: a node serves the operations of the routes
    it mounts (the ``/_voice/*`` ones only with ``VOICE_INSPECT`` on), ``docs/openapi.json`` all of
    them; nothing else in it depends on settings."""
    paths: dict[str, Schema] = {}
    tags: list[str] = []
    for op in operations:
        methods = paths.setdefault(op.path, {})
        if op.method in methods:
            raise ValueError(f"two operations for {op.method.upper()} {op.path}")
        methods[op.method] = op.to_openapi()
        if op.tag not in tags:
            tags.append(op.tag)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "voice-server",
            "version": version("voice-server"),
            "description": "The HTTP routes of voice-server, a self-hostable, wire-compatible token "
            "authority and voice/chat server for the Pinecall SDK. Every error is "
            '`{"detail", "code"}` with a stable `code`. The WebSocket routes (`/client`, '
            "`/chat/ws`, `/ws/stream` and the sdk extras' sockets) are described in the README.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": t, **({"description": TAG_DESCRIPTIONS[t]} if t in TAG_DESCRIPTIONS else {})}
            for t in tags
        ],
        "paths": paths,
        "components": {"securitySchemes": SECURITY_SCHEMES},
    }


def encode(doc: Schema) -> bytes:
    """The served (and committed) bytes: indented, keys in insertion order, one final newline."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


# Scripts and styles from this server only; the page fetches nothing but /openapi.json.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'"
)
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
DOCS_ASSETS = {"docs.js": "text/javascript", "docs.css": "text/css"}


def routes(doc: Schema) -> list[Route]:
    body = encode(doc)

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def docs_page(request: Request) -> Response:
        return FileResponse(
            STATIC / "docs.html", media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
        )

    async def docs_asset(request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[-1]
        return FileResponse(STATIC / name, media_type=DOCS_ASSETS[name], headers=_PAGE_HEADERS)

    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        *(Route(f"/docs/{name}", docs_asset, methods=["GET"]) for name in DOCS_ASSETS),
    ]


def operations() -> list[Operation]:
    return [
        Operation(
            "get",
            "/openapi.json",
            "This document",
            tag="docs",
            ok={"200": json_ok("The OpenAPI 3.1 document", {"type": "object"})},
        ),
        Operation(
            "get",
            "/docs",
            "A page that renders this document",
            tag="docs",
            ok={"200": typed_ok("The page", "text/html")},
        ),
        *(
            Operation(
                "get",
                f"/docs/{name}",
                f"The docs page's {name}",
                tag="docs",
                ok={"200": typed_ok(name, media)},
            )
            for name, media in DOCS_ASSETS.items()
        ),
    ]
