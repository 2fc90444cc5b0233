"""Liveness and readiness: ``/healthz`` (the process answers) and ``/readyz`` (store round trip,
not draining)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.errors import StoreUnavailable
from server.metrics import CONTENT_TYPE
from server.services.node import Node
from server.web import openapi


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    node: Node = request.app.state.node
    if node.draining:
        return JSONResponse({"status": "draining", "code": "draining", "detail": "node is draining"}, 503)
    try:
        latency = await node.store.ping()
        node.metrics.store_latency.observe(latency)
    except StoreUnavailable as exc:
        return JSONResponse({"status": "unavailable", "code": exc.code, "detail": exc.detail}, 503)
    return JSONResponse(
        {"status": "ready", "store_ms": round(latency * 1000, 2), "node_id": node.settings.node_id}
    )


async def metrics(request: Request) -> Response:
    """Prometheus exposition of this node's counters and live state."""
    node: Node = request.app.state.node
    return Response(node.metrics.render(), media_type=CONTENT_TYPE)


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


_NOT_READY = {
    "type": "object",
    "required": ["status", "code", "detail"],
    "properties": {
        "status": {"enum": ["draining", "unavailable"]},
        "code": {"enum": ["draining", StoreUnavailable.code]},
        "detail": {"type": "string"},
    },
}


def operations() -> list[openapi.Operation]:
    return [
        openapi.Operation(
            "get",
            "/healthz",
            "Liveness: the process answers",
            tag="health",
            ok={
                "200": openapi.json_ok(
                    "Alive",
                    {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                )
            },
        ),
        openapi.Operation(
            "get",
            "/readyz",
            "Readiness: a store round trip, and the node is not draining",
            tag="health",
            ok={
                "200": openapi.json_ok(
                    "Ready",
                    {
                        "type": "object",
                        "required": ["status", "store_ms", "node_id"],
                        "properties": {
                            "status": {"const": "ready"},
                            "store_ms": {"type": "number", "minimum": 0},
                            "node_id": {"type": "string"},
                        },
                    },
                ),
                "503": openapi.json_ok("Draining, or the store is unreachable", _NOT_READY),
            },
        ),
        openapi.Operation(
            "get",
            "/metrics",
            "Prometheus exposition of this node's counters and live state",
            tag="health",
            ok={"200": openapi.typed_ok("Metrics", "text/plain")},
        ),
    ]
