"""``voice-server whatsapp``: tools for debugging WhatsApp webhook signatures.

voice-server whatsapp sign --secret S < payload.json
    prints the ``X-Hub-Signature-256`` value Meta would send for exactly those bytes
voice-server whatsapp send --url URL [--secret S] [--phone-number-id ID] [--from N] [--text T] [--file F]
    POSTs a sample (or the given) webhook, signed when --secret is given, and prints the answer

Both read and send raw bytes, never re-serialised JSON: a signature covers the exact bytes.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from server.core.whatsapp import SIGNATURE_HEADER, sample_payload, sign

MAX_INPUT = 16 * 1024 * 1024
WEBHOOK_PATH = "/whatsapp/webhook"


def add_commands(commands: Any) -> None:
    """Register the ``whatsapp`` group on the top-level ``voice-server`` subparsers."""
    group = commands.add_parser("whatsapp", help="sign or send test WhatsApp webhooks").add_subparsers(
        required=True, metavar="ACTION"
    )
    signing = group.add_parser("sign", help="print the X-Hub-Signature-256 value for the bytes on stdin")
    signing.add_argument(
        "--secret", required=True, help="the Meta app secret (visible in `ps`: test secrets)"
    )
    signing.set_defaults(run=_sign)
    send = group.add_parser("send", help="POST a sample webhook to a running server and print the answer")
    send.add_argument("--url", required=True, help="server base URL or the full .../whatsapp/webhook URL")
    send.add_argument("--secret", help="sign with this app secret (omit to send an unsigned webhook)")
    send.add_argument("--phone-number-id", default="123456789", help="the channel's ref")
    send.add_argument("--from", dest="sender", default="15551234567", help="the contact's number")
    send.add_argument("--name", default="Test User", help="the contact's profile name")
    send.add_argument("--text", default="Hello from voice-server whatsapp send")
    send.add_argument("--file", help="send this file's bytes as the body instead of the sample")
    send.set_defaults(run=_send)


def _sign(args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read(MAX_INPUT + 1)
    if len(body) > MAX_INPUT:
        print(f"voice-server: input is larger than {MAX_INPUT} bytes", file=sys.stderr)
        return 1
    print(sign(body, args.secret))
    return 0


def _webhook_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(WEBHOOK_PATH) else url + WEBHOOK_PATH


def _send(args: argparse.Namespace) -> int:
    if not args.url.startswith(("http://", "https://")):
        print("voice-server: --url must start with http:// or https://", file=sys.stderr)
        return 2
    if args.file:
        try:
            body = Path(args.file).read_bytes()
        except OSError as exc:
            print(f"voice-server: cannot read --file {args.file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    else:
        message_id = "wamid.test-" + secrets.token_hex(8)  # a fresh id: the server dedupes redeliveries
        payload = sample_payload(
            args.phone_number_id, args.sender, args.text, message_id, args.name, int(time.time())
        )
        body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if args.secret:
        headers[SIGNATURE_HEADER] = sign(body, args.secret)
    import httpx  # here, not at the top: `whatsapp sign` and the other commands need none of it

    url = _webhook_url(args.url)
    # The server's own words for the two cases (its log says "accepting an UNSIGNED WhatsApp webhook").
    signing = "signed (X-Hub-Signature-256)" if args.secret else "UNSIGNED (no X-Hub-Signature-256)"
    print(f"POST {url} ({len(body)} bytes, {signing})", file=sys.stderr)
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        print(f"voice-server: request failed: {exc}", file=sys.stderr)
        return 1
    print(response.status_code)
    print(response.text)
    return 0 if response.is_success else 1
