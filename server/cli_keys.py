"""``voice-server keys``: API keys in the shared store the server uses.

voice-server keys create --org ORG [--publishable] [--label L] [--json] [--env-file PATH]
voice-server keys list [--json] [--env-file PATH]
voice-server keys revoke KEY_ID [--env-file PATH]
voice-server keys rotate KEY_ID [--grace SECONDS] [--json] [--env-file PATH]

Each runs with the server's own environment (``--env-file``: the file its unit or compose file
names); what only a listening server needs is not asked of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from server.core.apikeys import ApiKey, KeyKind
from server.settings import Settings, SettingsError

if TYPE_CHECKING:  # imported where used: the other commands need none of it
    from server.services.keys import KeyService


def add_commands(commands: Any) -> None:
    """Register the ``keys`` group on the top-level ``voice-server`` subparsers."""
    keys = commands.add_parser("keys", help="manage API keys in the configured store").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = keys.add_parser("create", help="create a key; prints the secret once, alone on a line")
    create.add_argument("--org", required=True)
    create.add_argument("--publishable", action="store_true", help="a pk_publishable_ key (public mint path)")
    create.add_argument("--label", default="")
    create.add_argument("--json", action="store_true")
    create.set_defaults(run=_keys_create)
    listing = keys.add_parser(
        "list", help="one line per key: id, org, created, last used, kind, status, label"
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id; it fails on its next use")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)
    rotate = keys.add_parser(
        "rotate", help="a new key for the same org; the old one keeps working for --grace seconds"
    )
    rotate.add_argument("key_id")
    rotate.add_argument("--grace", type=float, default=3600.0, help="seconds the old key still works (3600)")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(run=_keys_rotate)
    for command in (create, listing, revoke, rotate):
        command.add_argument(
            "--env-file",
            metavar="PATH",
            help="read the server's environment file (systemd EnvironmentFile=, compose env_file) first",
        )


def _with_keys(args: argparse.Namespace, action: Callable[[KeyService], Awaitable[int]]) -> int:
    # The server's own environment (and --env-file, the file its unit or compose file names);
    # what only a listening server needs is not asked of a key command.
    settings = Settings.from_env(env_file=args.env_file, serving=False)
    if settings.store_url.startswith("memory://"):
        raise SettingsError(
            "VOICE_STORE_URL: key commands need the shared store the server uses (e.g. redis://...); "
            "with the embedded memory:// store use the dev key printed at start, or VOICE_API_KEYS"
        )

    from server.services.keys import KeyService
    from server.store import open_store

    async def run() -> int:
        store = open_store(settings.store_url)
        try:
            return await action(KeyService(store, bus=store))
        finally:
            await store.aclose()

    return asyncio.run(run())


def _status(key: ApiKey, now: float) -> str:
    """``active``; ``expires@<time>`` in a rotation's grace; ``revoked@<time>`` after."""
    if key.revoked_at is None:
        return "active"
    return f"expires@{_when(key.revoked_at)}" if key.active_at(now) else f"revoked@{_when(key.revoked_at)}"


def _describe(key: ApiKey) -> dict[str, Any]:
    data = asdict(key)
    data["kind"] = key.kind.value
    data["status"] = "active" if key.active_at(time.time()) else "revoked"
    return data


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _keys_create(args: argparse.Namespace) -> int:
    async def action(keys: KeyService) -> int:
        kind = KeyKind.PUBLISHABLE if args.publishable else KeyKind.SECRET
        key, secret = await keys.create(args.org, kind, args.label)
        if args.json:
            print(json.dumps({**_describe(key), "secret": secret}))
        else:
            print(secret)
            print(f"created {key.kind.value} key {key.key_id} for org {key.org_id}", file=sys.stderr)
        return 0

    return _with_keys(args, action)


def _keys_list(args: argparse.Namespace) -> int:
    async def action(keys: KeyService) -> int:
        listed = await keys.list()
        if args.json:
            print(json.dumps([_describe(k) for k in listed]))
            return 0
        if not listed:
            print("no keys in the store (VOICE_API_KEYS keys are configuration, not listed)", file=sys.stderr)
        now = time.time()
        for key in listed:
            # Columns: id, org, created, last used, kind, status, label.
            print(
                f"{key.key_id}\t{key.org_id}\t{_when(key.created_at)}\t{_when(key.last_used_at)}\t"
                f"{key.kind.value}\t{_status(key, now)}\t{key.label or '-'}"
            )
        return 0

    return _with_keys(args, action)


def _keys_rotate(args: argparse.Namespace) -> int:
    async def action(keys: KeyService) -> int:
        rotated = await keys.rotate(args.key_id, args.grace)
        if rotated is None:
            print(f"voice-server: no active key {args.key_id!r}", file=sys.stderr)
            return 1
        new, secret, old = rotated
        if args.json:
            print(json.dumps({"new": {**_describe(new), "secret": secret}, "old": _describe(old)}))
            return 0
        print(secret)
        print(
            f"new {new.kind.value} key {new.key_id} for org {new.org_id}; "
            f"the old key {old.key_id} works until {_when(old.revoked_at)}",
            file=sys.stderr,
        )
        return 0

    return _with_keys(args, action)


def _keys_revoke(args: argparse.Namespace) -> int:
    async def action(keys: KeyService) -> int:
        key = await keys.revoke(args.key_id)
        if key is None:
            print(f"voice-server: no key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {key.key_id} (org {key.org_id})")
        return 0

    return _with_keys(args, action)
