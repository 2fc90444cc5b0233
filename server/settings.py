"""Settings: read once from the environment at start-up, frozen afterwards.

Nothing else in the server reads ``os.environ``. Every variable is documented in the README;
a bad value fails start-up with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from server.core.origins import parse_patterns
from server.core.ratelimit import RateLimit, parse_rate
from server.core.slugs import slugify
from server.errors import InvalidOriginPattern

T = TypeVar("T")
U = TypeVar("U")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


DEFAULT_GREETING = "Hi! I'm the mock agent. Say something and I'll echo it."
# Dev mode runs the built-in mock agent unless VOICE_MOCK_AGENT says otherwise ("off" disables it).
DEV_MOCK_AGENT = "demo"
DEV_MOCK_AGENT_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*")
DEFAULT_GRAPH_URL = "https://graph.facebook.com/v21.0"


class SettingsError(ValueError):
    """A variable has a value the server cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    dev: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    allow_public_bind: bool = False
    node_id: str = field(default_factory=lambda: "node-" + uuid.uuid4().hex[:8])
    public_url: str = ""  # empty: derived from host/port by `resolved()`
    public_url_derived: bool = False  # True when `resolved()` made it up from host and port
    store_url: str = "memory://"
    token_secrets: tuple[str, ...] = field(default=(), repr=False)
    token_ttl: float = 60.0
    bootstrap_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (org_id, secret key)
    rate_limit_key: RateLimit = field(default_factory=lambda: parse_rate("100/second"))
    rate_limit_public: RateLimit = field(default_factory=lambda: parse_rate("60/minute"))
    trusted_proxies: tuple[IpNetwork, ...] = ()
    log_level: str = "INFO"
    log_format: str = "json"  # json | text (dev mode's default is text)
    # Agents' /client sockets
    agent_heartbeat_ttl: float = 10.0
    max_agents_per_node: int = 10_000
    cache_seconds: float = 1.0  # node-local copies of keys and agent records
    max_frame_bytes: int = 64 * 1024
    # Sessions
    ice_servers: tuple[Mapping[str, Any], ...] = ()
    rtc_host_addresses: tuple[str, ...] = ()
    rtc_connect_seconds: float = 15.0  # a WebRTC session whose media never connects ends after this
    max_sessions: int = 200
    max_sessions_per_org: int = 50
    session_max_seconds: float = 3600.0
    session_idle_seconds: float = 300.0
    session_inbound_bytes: int = 32 * 1024  # per second, what one browser may send its agent
    chat_history_ttl: float = 86400.0
    # Bounds on stored chat threads (issue 15: anonymous users must not fill Redis)
    chat_thread_max_bytes: int = 128 * 1024
    chat_threads_per_agent: int = 1000  # in each namespace: sealed by a backend, chosen by browsers
    chat_threads_per_client: int = 50  # browser-chosen threads of one client IP, per agent
    chat_reply_seconds: float = 60.0  # a chat turn the agent leaves unanswered ends in chat.error
    mock_agent: str = ""  # agent id of the built-in mock agent ("" = none)
    mock_agent_origins: tuple[str, ...] = ()
    mock_agent_greeting: str = DEFAULT_GREETING
    mock_agent_org: str = ""  # empty: the org of the first VOICE_API_KEYS entry, else "dev"
    # WhatsApp
    whatsapp_verify_token: str = field(default="", repr=False)
    whatsapp_app_secrets: tuple[str, ...] = field(default=(), repr=False)
    whatsapp_require_signature: bool = True
    whatsapp_graph_url: str = DEFAULT_GRAPH_URL
    whatsapp_max_body: int = 1024 * 1024  # bytes of a webhook POST; larger is refused with 413
    whatsapp_session_idle_seconds: float = 3600.0  # besides Meta's 24 h window since the contact wrote
    whatsapp_queue_ttl: float = 86400.0  # how long messages for an offline number are kept
    whatsapp_queue_max: int = 100  # messages kept per offline number (the oldest go first)
    # The event stream (WS /ws/stream): one log per org, bounded, and a bound on a slow reader
    stream_retention: int = 1000  # events kept per org for after= replays
    stream_retention_seconds: float = 3600.0  # an org's log expires this long after its last event
    stream_queue: int = 1000  # events a stream socket may fall behind before it is closed
    # Request heads (issue 15 Medium 11): slowloris deadline and size limit, in the server itself
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    # Shutdown
    drain_seconds: float = 20.0
    # The inspection API under /_voice/ (issue 10): on in dev mode, off elsewhere unless asked
    inspect: bool = False
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    inspect_journal_max: int = 10_000

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        env_file: str | None = None,
        serving: bool = True,
        **overrides: Any,
    ) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``), with the assignments of
        ``env_file`` (the server's systemd/compose environment file) over it; ``overrides`` win
        (CLI flags). ``serving=False`` is for operator commands run with the server's own
        environment: what only a listening server needs (a token secret, a loopback bind in dev
        mode) is not required of them."""
        source: Mapping[str, str] = os.environ if env is None else env
        if env_file is not None:
            source = {**source, **read_env_file(env_file)}
        # A variable a CLI flag overrides is not read at all: `--port 9000` starts even when a
        # stale VOICE_PORT in the environment is not a port.
        reader = _Reader(source, skip={_FLAG_VARIABLES[k] for k in overrides if k in _FLAG_VARIABLES})
        dev = overrides.pop("dev", None)
        if dev is None:
            dev = reader.get("VOICE_DEV", _bool, False)
        values: dict[str, Any] = {
            "dev": dev,
            "host": reader.get("VOICE_HOST", str, "127.0.0.1"),
            "port": reader.get("VOICE_PORT", _port, 8080),
            "allow_public_bind": reader.get("VOICE_ALLOW_PUBLIC_BIND", _bool, False),
            "public_url": reader.get("VOICE_PUBLIC_URL", _http_url, ""),
            "store_url": reader.get("VOICE_STORE_URL", _store_url, "memory://"),
            "token_secrets": reader.get("VOICE_TOKEN_SECRET", _token_secrets, ()),
            "token_ttl": reader.get("VOICE_TOKEN_TTL", _positive(float, 3600), 60.0),
            "bootstrap_keys": reader.get("VOICE_API_KEYS", _api_keys, ()),
            "rate_limit_key": reader.get("VOICE_RATE_LIMIT_KEY", parse_rate, parse_rate("100/second")),
            "rate_limit_public": reader.get("VOICE_RATE_LIMIT_PUBLIC", parse_rate, parse_rate("60/minute")),
            "trusted_proxies": reader.get("VOICE_TRUSTED_PROXIES", _networks, ()),
            "log_level": reader.get("VOICE_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
            "log_format": reader.get("VOICE_LOG_FORMAT", _choice("json", "text"), "text" if dev else "json"),
            "agent_heartbeat_ttl": reader.get("VOICE_AGENT_HEARTBEAT_TTL", _positive(float, 600), 10.0),
            "cache_seconds": reader.get("VOICE_CACHE_SECONDS", _non_negative_float, 1.0),
            "max_agents_per_node": reader.get("VOICE_MAX_AGENTS", _positive(int, 1_000_000), 10_000),
            "ice_servers": reader.get("VOICE_ICE_SERVERS", _ice_servers, ()),
            "rtc_host_addresses": reader.get("VOICE_RTC_HOST_ADDRESSES", _addresses, ()),
            "rtc_connect_seconds": reader.get("VOICE_RTC_CONNECT_SECONDS", _positive(float, 600), 15.0),
            "max_sessions": reader.get("VOICE_MAX_SESSIONS", _positive(int, 100_000), 200),
            "max_sessions_per_org": reader.get("VOICE_MAX_SESSIONS_PER_ORG", _positive(int, 100_000), 50),
            "session_max_seconds": reader.get("VOICE_SESSION_MAX_SECONDS", _positive(float, 86400), 3600.0),
            "session_idle_seconds": reader.get("VOICE_SESSION_IDLE_SECONDS", _positive(float, 86400), 300.0),
            "session_inbound_bytes": reader.get(
                "VOICE_SESSION_INBOUND_BYTES", _positive(int, 1024 * 1024 * 1024), 32 * 1024
            ),
            "chat_history_ttl": reader.get("VOICE_CHAT_HISTORY_TTL", _positive(float, 30 * 86400), 86400.0),
            "chat_thread_max_bytes": reader.get(
                "VOICE_CHAT_THREAD_MAX_BYTES", _positive(int, 16 * 1024 * 1024), 128 * 1024
            ),
            "chat_threads_per_agent": reader.get(
                "VOICE_CHAT_THREADS_PER_AGENT", _positive(int, 10_000_000), 1000
            ),
            "chat_threads_per_client": reader.get(
                "VOICE_CHAT_THREADS_PER_CLIENT", _positive(int, 100_000), 50
            ),
            "chat_reply_seconds": reader.get("VOICE_CHAT_REPLY_SECONDS", _positive(float, 3600), 60.0),
            "mock_agent": reader.get("VOICE_MOCK_AGENT", _mock_agent, DEV_MOCK_AGENT if dev else ""),
            "mock_agent_origins": reader.get(
                "VOICE_MOCK_AGENT_ORIGINS", _origin_patterns, DEV_MOCK_AGENT_ORIGINS if dev else ()
            ),
            "mock_agent_greeting": reader.get("VOICE_MOCK_AGENT_GREETING", str, DEFAULT_GREETING),
            "mock_agent_org": reader.get("VOICE_MOCK_AGENT_ORG", str, ""),
            "whatsapp_verify_token": reader.get("VOICE_WHATSAPP_VERIFY_TOKEN", str, ""),
            "whatsapp_app_secrets": reader.get("VOICE_WHATSAPP_APP_SECRET", _csv, ()),
            "whatsapp_require_signature": reader.get("VOICE_WHATSAPP_REQUIRE_SIGNATURE", _bool, not dev),
            "whatsapp_graph_url": reader.get("VOICE_WHATSAPP_GRAPH_URL", _http_url, DEFAULT_GRAPH_URL),
            "whatsapp_max_body": reader.get("VOICE_WHATSAPP_MAX_BODY", _positive(int, 16 << 20), 1 << 20),
            "whatsapp_session_idle_seconds": reader.get(
                "VOICE_WHATSAPP_SESSION_IDLE_SECONDS", _positive(float, 86400), 3600.0
            ),
            "whatsapp_queue_ttl": reader.get("VOICE_WHATSAPP_QUEUE_TTL", _positive(float, 604800), 86400.0),
            "whatsapp_queue_max": reader.get("VOICE_WHATSAPP_QUEUE_MAX", _positive(int, 10_000), 100),
            "stream_retention": reader.get("VOICE_STREAM_RETENTION", _positive(int, 1_000_000), 1000),
            "stream_retention_seconds": reader.get(
                "VOICE_STREAM_RETENTION_SECONDS", _positive(float, 30 * 86400), 3600.0
            ),
            "stream_queue": reader.get("VOICE_STREAM_QUEUE", _positive(int, 1_000_000), 1000),
            "header_timeout": reader.get("VOICE_HEADER_TIMEOUT", _positive(float, 3600), 10.0),
            "max_header_bytes": reader.get("VOICE_MAX_HEADER_BYTES", _int_between(1024, 16 << 20), 64 * 1024),
            "drain_seconds": reader.get("VOICE_DRAIN_SECONDS", _positive(float, 3600), 20.0),
            "inspect": reader.get("VOICE_INSPECT", _bool, dev),
            "admin_keys": reader.get("VOICE_ADMIN_KEYS", _admin_keys, ()),
            "inspect_journal_max": reader.get(
                "VOICE_INSPECT_JOURNAL_MAX", _positive(int, 10_000_000), 10_000
            ),
        }
        node_id = reader.get("VOICE_NODE_ID", str, "")
        if node_id:
            values["node_id"] = node_id
        values.update(overrides)
        settings = cls(**values)
        return settings.resolved(serving)

    def resolved(self, serving: bool = True) -> Settings:
        """Fill in what derives from other values, and check what spans several variables."""
        settings = self
        if not serving:
            settings = replace(settings, token_secrets=settings.token_secrets or (secrets.token_urlsafe(32),))
        elif settings.dev and not settings.allow_public_bind and not _loopback(settings.host):
            raise SettingsError(
                f"VOICE_HOST: dev mode binds to loopback only (got {settings.host!r}); "
                "pass --allow-public-bind (VOICE_ALLOW_PUBLIC_BIND=1) to expose a dev server"
            )
        if not settings.token_secrets:
            if not settings.dev:
                raise SettingsError(
                    "VOICE_TOKEN_SECRET: required outside dev mode (a comma-separated list, newest last)"
                )
            settings = replace(settings, token_secrets=(secrets.token_urlsafe(32),))
        if settings.inspect and not settings.dev and not settings.admin_keys:
            raise SettingsError(
                "VOICE_ADMIN_KEYS: required when VOICE_INSPECT=1 outside dev mode "
                f"(a comma-separated list of keys of at least {MIN_ADMIN_KEY} characters)"
            )
        org_keys = {key for _, key in settings.bootstrap_keys}
        if any(key in org_keys for key in settings.admin_keys):
            raise SettingsError("VOICE_ADMIN_KEYS: an admin key must not be one of the VOICE_API_KEYS")
        if not settings.public_url:
            host = settings.host
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 - only naming the wildcard, not binding
                host = "127.0.0.1"
            if ":" in host:
                host = f"[{host}]"
            settings = replace(settings, public_url=f"http://{host}:{settings.port}", public_url_derived=True)
        if settings.mock_agent and not settings.mock_agent_org:
            org = settings.bootstrap_keys[0][0] if settings.bootstrap_keys else "dev"
            settings = replace(settings, mock_agent_org=org)
        return settings

    def bound_to(self, port: int) -> Settings:
        """These settings once ``port`` 0 was bound to ``port``: the derived public URL follows."""
        settings = replace(self, port=port)
        if self.public_url_derived:
            settings = replace(settings, public_url="", public_url_derived=False).resolved(serving=False)
        return settings

    @property
    def unreachable_public_url(self) -> bool:
        """Bound to a non-loopback address while the mints' ``server`` is a made-up loopback URL:
        browsers on other machines would be sent to themselves."""
        return self.public_url_derived and not _loopback(self.host)

    @property
    def public_ws_url(self) -> str:
        return "ws" + self.public_url[len("http") :]


def read_env_file(path: str) -> dict[str, str]:
    """``NAME=value`` lines as systemd's ``EnvironmentFile=`` and compose's ``env_file`` read
    them: blank lines and ``#`` comments skipped, an optional ``export``, values optionally in
    matching single or double quotes."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise SettingsError(f"--env-file {path}: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(("#", ";")):
            continue
        text = text.removeprefix("export ").lstrip()
        name, equals, value = text.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name.replace("_", "").isalnum() or name[0].isdigit():
            raise SettingsError(
                f"--env-file {path}, line {number}: expected NAME=value, got {line.strip()!r}"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


# The `serve` flags and the variables they stand for.
_FLAG_VARIABLES = {
    "dev": "VOICE_DEV",
    "host": "VOICE_HOST",
    "port": "VOICE_PORT",
    "allow_public_bind": "VOICE_ALLOW_PUBLIC_BIND",
}


class _Reader:
    def __init__(self, env: Mapping[str, str], skip: set[str] | None = None) -> None:
        self._env = env
        self._skip = skip or set()

    def get(self, name: str, parse: Callable[[str], T], default: U) -> T | U:
        if name in self._skip:
            return default
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{name}: {exc}") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _number(kind: Callable[[str], T], raw: str) -> T:
    """``kind(raw)`` with a message that says what was expected (not Python's own wording)."""
    try:
        return kind(raw)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ValueError(f"expected {expected}, got {raw!r}") from None


def _port(raw: str) -> int:
    port = _number(int, raw)  # 0: any free port, reported once bound
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range: {port}")
    return port


def _positive(kind: Callable[[str], T], maximum: float) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = _number(kind, raw)
        if not 0 < float(value) <= maximum:  # type: ignore[arg-type]
            raise ValueError(f"must be > 0 and <= {maximum:g}, got {raw!r}")
        return value

    return parse


def _int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = _number(int, raw)
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, got {raw!r}")
        return value

    return parse


def _non_negative_float(raw: str) -> float:
    value = _number(float, raw)
    if not 0 <= value <= 60:
        raise ValueError(f"must be between 0 and 60, got {raw!r}")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for option in options:
            if raw.lower() == option.lower():
                return option
        raise ValueError(f"expected one of {', '.join(options)}, got {raw!r}")

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _mock_agent(raw: str) -> str:
    """An agent id, or ``off``/``none`` to run no mock agent (even in dev mode)."""
    if raw.lower() in ("off", "none", "0", "false"):
        return ""
    slug = slugify(raw)
    if not slug or len(raw) > 128:
        raise ValueError(f"not a usable agent id: {raw!r}")
    return slug


def _origin_patterns(raw: str) -> tuple[str, ...]:
    """``allowed_origins`` patterns, validated now so a typo fails start-up, not registration."""
    patterns = _csv(raw)
    try:
        parse_patterns(list(patterns))
    except InvalidOriginPattern as exc:
        raise ValueError(exc.detail) from None
    return patterns


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw) < len("http://x"):
        raise ValueError(f"expected an http:// or https:// URL, got {raw!r}")
    return raw.rstrip("/")


def _store_url(raw: str) -> str:
    schemes = ("memory://", "redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
    if not raw.startswith(schemes):
        raise ValueError(f"expected one of {', '.join(schemes)}, got {raw.split('://')[0]!r}")
    return raw


MIN_TOKEN_SECRET = 32  # characters: `openssl rand -base64 32` gives 44


def _token_secrets(raw: str) -> tuple[str, ...]:
    secrets_ = _csv(raw)
    for index, secret in enumerate(secrets_, 1):
        if len(secret) < MIN_TOKEN_SECRET:
            raise ValueError(
                f"expected secrets of at least {MIN_TOKEN_SECRET} characters (openssl rand -base64 32); "
                f"secret {index} of {len(secrets_)} has {len(secret)}"
            )
    return secrets_


MIN_ADMIN_KEY = 32


def _admin_keys(raw: str) -> tuple[str, ...]:
    keys = _csv(raw)
    for index, key in enumerate(keys, 1):
        if len(key) < MIN_ADMIN_KEY:
            raise ValueError(
                f"expected keys of at least {MIN_ADMIN_KEY} characters (openssl rand -base64 32); "
                f"key {index} of {len(keys)} has {len(key)}"
            )
    return keys


def _api_keys(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in _csv(raw):
        org, sep, key = part.partition(":")
        if not sep or not org or not key:
            raise ValueError("expected org_id:key[,org_id:key...]")
        if len(key) < 16:
            raise ValueError(f"the key for org {org!r} is shorter than 16 characters")
        pairs.append((org, key))
    return tuple(pairs)


def _networks(raw: str) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(part, strict=False) for part in _csv(raw))


def _addresses(raw: str) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_address(part)) for part in _csv(raw))


def _ice_servers(raw: str) -> tuple[Mapping[str, Any], ...]:
    expected = "expected a JSON list of RTCIceServer objects, each with 'urls'"
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{expected}; not JSON ({exc})") from None
    if not isinstance(value, list) or not all(isinstance(s, dict) and "urls" in s for s in value):
        raise ValueError(expected)
    return tuple(value)
