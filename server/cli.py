"""``voice-server``: run the server and manage API keys.

voice-server serve [--dev] [--host H] [--port P] [--allow-public-bind] [--ready-file PATH]
voice-server wait URL [--timeout SECONDS]
voice-server keys create --org ORG [--publishable] [--label L] [--json] [--env-file PATH]
voice-server keys list [--json] [--env-file PATH]
voice-server keys revoke KEY_ID [--env-file PATH]
voice-server keys rotate KEY_ID [--grace SECONDS] [--json] [--env-file PATH]
voice-server whatsapp sign --secret S < payload.json
voice-server whatsapp send --url URL [--secret S] [--file payload.json]
voice-server openapi [--output PATH [--check]]
voice-server inspect [--url URL] [--admin-key KEY] [--env-file PATH] [--json] tokens|journal|...
voice-server conformance URL [--api-key KEY] [--vectors DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from server import cli_conformance, cli_inspect, cli_keys, cli_openapi, cli_whatsapp
from server import log as logsetup
from server.core.redaction import masked_url
from server.errors import VoiceError
from server.log import event
from server.settings import Settings, SettingsError

if TYPE_CHECKING:  # imported where used: `--version`, `whatsapp sign` and `--help` need none of it
    from server.services.node import Node


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except SettingsError as exc:
        print(f"voice-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except VoiceError as exc:
        print(f"voice-server: {exc.detail} ({exc.code})", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voice-server", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"voice-server {version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--dev", action="store_true", default=None, help="dev mode (VOICE_DEV=1)")
    serve.add_argument("--host", help="bind address (VOICE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (VOICE_PORT, default 8080)")
    serve.add_argument(
        "--allow-public-bind", action="store_true", default=None, help="dev mode on a non-loopback address"
    )
    serve.add_argument(
        "--ready-file",
        metavar="PATH",
        help="once serving, write {url, api_key, node_id} as JSON there (mode 0600)",
    )
    serve.set_defaults(run=_serve)

    wait = commands.add_parser(
        "wait", help="wait until a server's /readyz answers 200 (exit 0), or time out (1)"
    )
    wait.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    wait.add_argument("--timeout", type=float, default=30.0, help="seconds (30)")
    wait.set_defaults(run=_wait)

    cli_keys.add_commands(commands)  # voice-server keys create|list|revoke|rotate
    cli_whatsapp.add_commands(commands)  # voice-server whatsapp sign|send
    cli_openapi.add_commands(commands)  # voice-server openapi [--output PATH [--check]]
    cli_inspect.add_commands(commands)  # voice-server inspect tokens|journal|sessions|reset|fault|clock
    cli_conformance.add_commands(commands)  # voice-server conformance URL [--api-key KEY]
    return parser


# -- serve ------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.web.app import create_app
    from server.web.headguard import guarded_http_protocol

    overrides: dict[str, Any] = {}
    for name in ("dev", "host", "port", "allow_public_bind"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    settings = Settings.from_env(**overrides)
    logsetup.setup(settings.log_level, settings.log_format)
    if settings.dev and not settings.store_url.startswith("memory://"):
        problem = asyncio.run(_store_problem(settings.store_url))
        if problem is not None:
            print(f"voice-server: {problem}", file=sys.stderr)
            return 1
    # Bind before anything is printed or opened: a port in use is one line and exit 1, not a
    # banner with a fresh key and curls that then reach the other server. Port 0 takes a free
    # port, which the banner, the start-up line and --ready-file then report.
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        print(
            f"voice-server: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    if settings.port == 0:
        settings = settings.bound_to(sock.getsockname()[1])
    app = create_app(settings, on_ready=functools.partial(_started, ready_file=args.ready_file))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # httptools, with a deadline and a size limit on every request head (server/web/headguard.py)
        http=guarded_http_protocol(settings.header_timeout, settings.max_header_bytes),
        log_config=None,
        access_log=False,  # our AccessLog middleware logs requests, with tokens redacted
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        # No permessage-deflate: our frames are small JSON, and a deflate context per socket costs
        # CPU on every frame and ~100 KiB of memory per connection.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # X-Forwarded-For is read only from VOICE_TRUSTED_PROXIES
        server_header=False,
    )
    _DrainingServer(config, settings.drain_seconds).run(sock)
    return 0


async def _started(node: Node, ready_file: str | None) -> None:
    """Once the node is up: the dev banner or the production line, then the ready file."""
    key = await _dev_banner(node) if node.settings.dev else await _summary(node)
    if ready_file:
        _write_ready_file(
            ready_file, {"url": node.settings.public_url, "api_key": key, "node_id": node.settings.node_id}
        )


def _write_ready_file(path: str, content: dict[str, Any]) -> None:
    """Written whole (a temporary file renamed over it) and readable by its owner only: it holds a
    secret key. A CI script waits for it to appear."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".voice-ready-")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(content, file)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (uvicorn listens on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections from now on wait in the backlog until uvicorn serves them
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def _store_problem(url: str) -> str | None:
    """Why the store at ``url`` cannot be used right now, or None. Dev mode checks first and
    stops with that one line; a production node starts anyway (``/readyz`` says 503) and its
    presence beat reports the outage once, and again when it is over."""
    from server.store import open_store

    store = open_store(url)
    try:
        await store.ping()
    except VoiceError as exc:
        return (
            f"cannot reach the store at {masked_url(url)}: {exc.detail}; start it, "
            "or unset VOICE_STORE_URL to use the embedded store"
        )
    finally:
        await store.aclose()
    return None


class _DrainingServer:
    """uvicorn, with SIGTERM/SIGINT first draining the node (``Node.drain``) before uvicorn's
    own shutdown; a second signal skips the drain."""

    def __init__(self, config: Any, drain_seconds: float) -> None:
        import uvicorn

        self.drain_seconds = drain_seconds
        self.server = uvicorn.Server(config)
        self.app = config.app
        self._drain: asyncio.Task[None] | None = None
        self._default_exit = self.server.handle_exit
        self.server.handle_exit = self.handle_exit  # type: ignore[method-assign]

    def run(self, sock: socket.socket) -> None:
        self.server.run(sockets=[sock])

    def handle_exit(self, sig: int, frame: Any) -> None:
        node = getattr(self.app.state, "node", None)
        if self._drain is not None or node is None:
            self._default_exit(sig, frame)  # second signal, or nothing to drain yet
            return
        logging.getLogger("voice.node").info("signal %s: draining for up to %.0fs", sig, self.drain_seconds)
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit(node, sig, frame))

    async def _drain_then_exit(self, node: Node, sig: int, frame: Any) -> None:
        try:
            await node.drain(self.drain_seconds)
        finally:
            self._default_exit(sig, frame)


def version() -> str:
    try:
        return importlib.metadata.version("voice-server")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


async def _summary(node: Node) -> str | None:
    """Production start-up: one line that says what this node is, then any warning about it.
    Returns the first VOICE_API_KEYS key, for --ready-file (None when there is none)."""
    settings = node.settings
    startup = logging.getLogger("voice.node")
    event(
        startup,
        "voice-server started",
        version=version(),
        node_id=settings.node_id,
        public_url=settings.public_url,
        store=masked_url(settings.store_url),
        listen=f"{settings.host}:{settings.port}",
    )
    if settings.unreachable_public_url:
        startup.warning(
            "VOICE_PUBLIC_URL is not set while bound to %s: mints answer server=%s, which browsers on "
            "other machines cannot reach; set VOICE_PUBLIC_URL to this node's own public URL",
            settings.host,
            settings.public_url,
        )
    return settings.bootstrap_keys[0][1] if settings.bootstrap_keys else None


async def _dev_banner(node: Node) -> str:
    """The dev banner; returns the key it printed."""
    settings = node.settings
    lines = [f"voice-server (dev mode) on {settings.public_url}  store={settings.store_url}"]
    if settings.bootstrap_keys:
        org = settings.bootstrap_keys[0][0]
        lines.append(f"  API keys from VOICE_API_KEYS: {len(settings.bootstrap_keys)} (org {org})")
        key = settings.bootstrap_keys[0][1]
    else:
        _, key = await node.keys.create("dev", label="dev mode")
        lines += [
            "  dev org:  dev",
            f"  API key:  {key}",
            "  (a new key every start; pin one with VOICE_API_KEYS=dev:<key>)",
        ]
    org = settings.bootstrap_keys[0][0] if settings.bootstrap_keys else "dev"
    mock, base = node.mock_agent, settings.public_url
    if mock is None:
        lines += [
            "  Mint a token (with an agent online over /client):",
            f'    curl -H "Authorization: Bearer {key}" "{base}/webrtc/token?agent_id=my-agent"',
        ]
    else:
        lines.append(f"  Mock agent {mock.agent_id!r} (org {mock.org_id}) is online; mint a chat token:")
        mint = f"{base}/chat/token?agent_id={mock.agent_id}"
        if mock.org_id == org:
            lines.append(f'    curl -H "Authorization: Bearer {key}" "{mint}"')
        if mock.origins:
            lines.append(f'    curl -H "Origin: http://localhost:3000" "{mint}"')
        lines.append(
            f"  then connect to {settings.public_ws_url}/chat/ws?token=<token> "
            """and send {"event": "message", "text": "hi"}"""
        )
        lines.append(f"  or open {base}/demo?agent={mock.agent_id} in a browser (voice and chat)")
    if settings.unreachable_public_url:
        lines.append(
            f"  WARNING: bound to {settings.host} with no VOICE_PUBLIC_URL: mints answer server={base}, "
            "which other machines cannot reach; set VOICE_PUBLIC_URL"
        )
    print("\n".join(lines), flush=True)
    return key


# -- wait -------------------------------------------------------------------------------------
def _wait(args: argparse.Namespace) -> int:
    """Poll ``URL/readyz`` until it answers 200. urllib, not httpx: a CI step runs this first."""
    import urllib.error
    import urllib.request

    url = args.url.rstrip("/") + "/readyz"
    if not url.startswith(("http://", "https://")):
        print("voice-server: the URL must start with http:// or https://", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http(s) checked above
                if response.status == 200:
                    print(f"ready: {args.url}")
                    return 0
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() >= deadline:
            print(f"voice-server: {url} not ready after {args.timeout:g}s ({last})", file=sys.stderr)
            return 1
        time.sleep(0.2)
