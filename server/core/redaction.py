"""What may appear in a log line: secrets redacted by field name, headers by allow-list.

* **Field names.** A value is secret when its name, compared without case, ``_``, ``-`` and ``.``,
  is one of :data:`_SECRET_NAMES` or ends in one of :data:`_SECRET_SUFFIXES`: ``verifyToken``,
  ``verify_token``, ``hub.verify_token`` and ``X-Verify-Token`` are one name. That holds in
  structured data (:func:`redact_data`, at any depth) and in text (:func:`redact_text`:
  ``name=value``, ``name: value``, ``"name": "value"``, ``'name': 'value'``).
* **Headers.** Only the names in :data:`SAFE_HEADERS` are shown in clear (:func:`header_value`);
  every other header, ``Cookie``, ``X-Api-Key`` and whatever a client invents, is redacted.
* **Shapes.** ``Bearer``/``Basic`` credentials, our own token and key prefixes and the password of
  a ``scheme://user:password@host`` URL are redacted wherever they stand.

Patterns alone are not enough: websockets logs each frame elided to its start and end, and a
secret's tail is then no longer next to its field name. :func:`redact_frame` redacts the whole
payload first, then shortens it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

REDACTED = "[redacted]"
_MAX_DEPTH = 32
_MAX_SHOWN = 600  # characters of a frame payload shown in a log line

_SECRET_NAMES = frozenset(
    {
        "auth",
        "authorization",
        "proxyauthorization",
        "cookie",
        "setcookie",
        "credential",
        "credentials",
        "passphrase",
        "privatekey",
        # A browser-chosen chat thread id works like a password (README, Chat): never logged.
        "thread",
        "threadid",
    }
)
# token, accessToken, verify_token, hub.verify_token, appSecret, client_secret, api_key, X-Api-Key...
_SECRET_SUFFIXES = ("token", "secret", "secrets", "password", "passwd", "apikey", "apikeys")

# Headers shown in clear; any other is redacted (an allow-list: new secret headers stay hidden).
SAFE_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "date",
        "forwarded",
        "host",
        "keep-alive",
        "origin",
        "pragma",
        "sec-fetch-dest",
        "sec-fetch-mode",
        "sec-fetch-site",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-key",
        "sec-websocket-protocol",
        "sec-websocket-version",
        "server",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-request-id",
    }
)

_NOT_NAME = re.compile(r"[_\-.\s]")
# A cheap first look: text without any of these words has no named secret in it.
_HINT = re.compile(r"token|secret|passw|api.?key|auth|cookie|credential|passphrase|private.?key|thread", re.I)
# name, separator, value: quoted (maybe cut short by an elision) or bare.
_PAIR = re.compile(
    r"""(?P<q>["']?)(?P<name>[A-Za-z_][\w.\-]*)(?P=q)(?P<sep>\s*[:=]\s*)"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|[^\s&,;"'}\])?=]+)"""
)
# Values that run to the end of the line: "Cookie: a=1; b=2", "Authorization: Bearer x".
_LINE_VALUED = re.compile(
    r"""(?P<head>(?<![\w-])(?:set-cookie|cookie|proxy-authorization|authorization)\s*:[ \t]*)"""
    r"""(?P<value>[^\r\n"']+)""",
    re.I,
)
_CREDENTIAL = re.compile(r"\b(bearer|basic)(\s+)(?!\[redacted\])[A-Za-z0-9\-._~+/]+=*", re.I)
_SHAPES = [
    (re.compile(r"\b(sk_live_|pk_publishable_|wrtc_|cht_|stm_)[A-Za-z0-9_\-.]+"), rf"\1{REDACTED}"),
    (re.compile(r"\b([a-z][a-z0-9+.\-]*://[^\s/@:]*:)[^\s/@]+@", re.I), rf"\1{REDACTED}@"),
]


@functools.lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (any case, ``_``/``-``/``.`` ignored)."""
    key = _NOT_NAME.sub("", name).lower()
    return key in _SECRET_NAMES or key.endswith(_SECRET_SUFFIXES)


def header_value(name: str, value: str) -> str:
    """``value`` if header ``name`` is on the allow-list, else :data:`REDACTED`."""
    return redact_text(value) if name.strip().lower() in SAFE_HEADERS else REDACTED


def redact_headers(headers: Iterable[tuple[Any, Any]]) -> list[tuple[str, str]]:
    return [(_text(name), header_value(_text(name), _text(value))) for name, value in headers]


def redact_data(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, strings, nested) with secrets redacted."""
    if depth > _MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): _redact_field(str(k), v, depth) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [redact_data(item, depth + 1) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _redact_field(name: str, value: Any, depth: int) -> Any:
    if secret_name(name):
        return REDACTED
    if name.lower() == "headers":
        if isinstance(value, Mapping):
            return dict(redact_headers(value.items()))
        if isinstance(value, list | tuple) and all(
            isinstance(p, list | tuple) and len(p) == 2 for p in value
        ):
            return redact_headers(value)
    return redact_data(value, depth + 1)


def redact_text(text: str) -> str:
    """``text`` with named secrets, credentials and our tokens replaced by :data:`REDACTED`."""
    text = _CREDENTIAL.sub(rf"\1\2{REDACTED}", text)
    if _HINT.search(text):
        text = _LINE_VALUED.sub(lambda m: m["head"] + REDACTED, text)
        text = _PAIR.sub(_pair, text)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


# A word each of redact_text's patterns needs (a superset: "key" stands for api.?key and
# private.?key): an ASCII query holding none of them comes out of redact_text as it went in.
# Substring tests, ~10x cheaper than one case-blind regex search over the query.
_QUERY_WORDS = (
    "token", "secret", "passw", "key", "auth", "cookie", "credential", "thread", "bearer", "basic",
    "sk_live_", "pk_publishable_", "wrtc_", "cht_", "stm_", "@", "://",
)  # fmt: skip


def redact_target(path: str, query: str) -> str:
    """``path?query`` as :func:`redact_text` redacts it, at a fraction of its cost in the access
    log's common case: a path seen before (the mint's ``/webrtc/token`` holds a secret word, so
    the full pass runs on it once and is remembered) and a query without a secret word."""
    if not query:
        return _redacted_path(path)
    if query.isascii():
        lowered = query.lower()
        for word in _QUERY_WORDS:
            if word in lowered:
                break
        else:
            return _redacted_path(path) + "?" + query
    return redact_text(path + "?" + query)


@functools.lru_cache(maxsize=1024)
def _redacted_path(path: str) -> str:
    return redact_text(path)


def _pair(match: re.Match[str]) -> str:
    head, value = match[0][: match.start("value") - match.start()], match["value"]
    if not secret_name(match["name"]):
        # A value may hold pairs of its own: "path": "/chat/ws?token=...".
        return head + _PAIR.sub(_pair, value) if len(value) > 1 else match[0]
    if value.startswith("[redacted"):
        return match[0]
    quote = value[0] if value[0] in "'\"" else ""
    closing = quote if len(value) > 1 and value.endswith(quote) else ""
    return head + quote + REDACTED + closing


def redact_frame(opcode: str, data: bytes, fin: bool = True) -> str:
    """A data frame (``TEXT``, ``BINARY``, ``CONT``) for a log line: a JSON payload with its
    secret fields redacted, then shortened; anything else (binary, a fragment, not JSON) by its
    size only."""
    size = f"[{len(data)} byte{'' if len(data) == 1 else 's'}]"
    try:
        if not fin or opcode == "CONT":
            raise ValueError("a fragment is not a whole JSON document")
        shown = json.dumps(redact_data(json.loads(data)), ensure_ascii=False, separators=(",", ":"))
    except (ValueError, RecursionError):
        return f"{opcode} (not a JSON document) {size}"
    if len(shown) > _MAX_SHOWN:
        shown = shown[:_MAX_SHOWN] + "..."
    return f"{opcode} {shown} {size}"


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def masked_url(url: str) -> str:
    """``url`` fit for a log line or a message: its password replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    auth, _, hosts = parts.netloc.rpartition("@")
    user = auth.split(":", 1)[0] if ":" in auth else ""
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()
