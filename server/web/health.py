"""Liveness and readiness: ``/healthz`` (the process answers) and ``/readyz`` (store round trip,
not draining)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.errors import StoreUnavailable
from server.metrics import CONTENT_TYPE
from server.services.node import Node


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
