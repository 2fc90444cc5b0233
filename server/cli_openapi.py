"""``voice-server openapi``: print or write the OpenAPI document the server serves at
``/openapi.json`` (``scripts/openapi`` writes ``docs/openapi.json`` with it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_commands(commands: Any) -> None:
    openapi = commands.add_parser(
        "openapi", help="print or write the OpenAPI 3.1 document of the HTTP routes"
    )
    openapi.add_argument("--output", metavar="PATH", help="write it there instead of printing it")
    openapi.add_argument(
        "--check", action="store_true", help="only compare with --output: exit 1 when it differs"
    )
    openapi.set_defaults(run=_openapi)


def _openapi(args: argparse.Namespace) -> int:
    from server.web import openapi
    from server.web.app import operations

    body = openapi.encode(openapi.document(operations()))
    if args.output is None:
        sys.stdout.buffer.write(body)
        return 0
    path = Path(args.output)
    if args.check:
        if not path.exists() or path.read_bytes() != body:
            print(f"voice-server: {path} is not what the server serves; run scripts/openapi", file=sys.stderr)
            return 1
        return 0
    path.write_bytes(body)
    print(f"wrote {path} ({len(body)} bytes)")
    return 0
