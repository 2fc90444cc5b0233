"""``GET`` and ``POST /whatsapp/webhook``: Meta's WhatsApp Cloud API webhooks (CONTRACT §7).

The POST body is read once, as raw bytes, up to ``VOICE_WHATSAPP_MAX_BODY``: the signature is
over those exact bytes. Refusals are 403 ``{detail, code}``; once a body verifies the answer
is 200 whatever it holds, because Meta disables webhooks that keep failing.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from server.core.text import is_ascii_number
from server.core.whatsapp import SIGNATURE_HEADER
from server.errors import (
    BadRequest,
    PayloadTooLarge,
    SignatureError,
    SignatureRequired,
    StoreUnavailable,
    VerifyTokenInvalid,
    VoiceError,
)
from server.services.node import Node
from server.web import openapi


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if is_ascii_number(declared) and int(declared) > limit:
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


async def webhook(request: Request) -> Response:
    return await (receive(request) if request.method == "POST" else verify(request))


def routes() -> list[Route]:
    # One route for both methods: a 405 then lists them all in ``Allow`` (RFC 9110 §15.5.6); two
    # routes on one path each answered with only their own method.
    return [Route("/whatsapp/webhook", webhook, methods=["GET", "POST"])]


def operations() -> list[openapi.Operation]:
    return [
        openapi.Operation(
            "get",
            "/whatsapp/webhook",
            "Meta's subscription check: echoes hub.challenge for a registered verify token",
            tag="whatsapp",
            parameters=(
                openapi.query("hub.mode", "must be `subscribe`", required=True),
                openapi.query(
                    "hub.verify_token", "a registered WhatsApp channel's verify token", required=True
                ),
                openapi.query(
                    "hub.challenge",
                    "1 to 256 letters, digits, '.', '_' or '-'",
                    {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,256}$"},
                    required=True,
                ),
            ),
            ok={"200": openapi.typed_ok("The challenge, echoed", "text/plain")},
            errors=(BadRequest, VerifyTokenInvalid, StoreUnavailable),
        ),
        openapi.Operation(
            "post",
            "/whatsapp/webhook",
            "Meta's WhatsApp Cloud API events (signed with the app secret)",
            tag="whatsapp",
            description="Once the body's signature verifies, the answer is 200 whatever the body "
            "holds (Meta disables webhooks that keep failing).",
            parameters=(
                openapi.request_header(SIGNATURE_HEADER, "`sha256=` and the hex HMAC-SHA256 of the raw body"),
            ),
            body={
                "required": True,
                "description": "at most VOICE_WHATSAPP_MAX_BODY bytes; signed as sent",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            ok={
                "200": openapi.json_ok(
                    "Accepted",
                    {
                        "type": "object",
                        "required": ["status", "events"],
                        "properties": {
                            "status": {"const": "ok"},
                            "events": {"type": "integer", "minimum": 0},
                        },
                    },
                )
            },
            errors=(BadRequest, SignatureError, SignatureRequired, PayloadTooLarge, StoreUnavailable),
        ),
    ]
