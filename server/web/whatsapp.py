"""``GET`` and ``POST /whatsapp/webhook``: Meta's WhatsApp Cloud API webhooks (CONTRACT §7).

The POST body is read once, as raw bytes, up to ``VOICE_WHATSAPP_MAX_BODY``: the signature is
over those exact bytes. Refusals are 403 ``{detail, code}``; once a body verifies the answer
is 200 whatever it holds, because Meta disables webhooks that keep failing.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from server.core.whatsapp import SIGNATURE_HEADER
from server.errors import PayloadTooLarge, VoiceError
from server.services.node import Node


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"webhook body of {declared} bytes is larger than {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a missing or lying Content-Length is caught here
            raise PayloadTooLarge(f"webhook body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def verify(request: Request) -> Response:
    node: Node = request.app.state.node
    query = request.query_params
    challenge = await node.whatsapp.verify_subscription(
        query.get("hub.mode"), query.get("hub.verify_token"), query.get("hub.challenge")
    )
    return PlainTextResponse(challenge, headers={"Cache-Control": "no-store"})


async def receive(request: Request) -> Response:
    node: Node = request.app.state.node
    body = await _body(request, node.settings.whatsapp_max_body)
    try:
        accepted = await node.whatsapp.receive(body, request.headers.get(SIGNATURE_HEADER))
    except VoiceError as exc:
        if node.journal is not None:
            node.journal.note("webhook.verdict", verdict="refused", code=exc.code, channel="whatsapp")
        raise
    if node.journal is not None:
        node.journal.note("webhook.verdict", verdict="accepted", channel="whatsapp", events=accepted)
    return JSONResponse({"status": "ok", "events": accepted})


def routes() -> list[Route]:
    return [
        Route("/whatsapp/webhook", verify, methods=["GET"]),
        Route("/whatsapp/webhook", receive, methods=["POST"]),
    ]
