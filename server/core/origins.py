"""Browser ``Origin`` parsing and ``allowed_origins`` matching (CONTRACT §5), pure and sans-I/O.

An agent may list origins whose pages can mint tokens without an API key. The ``Origin`` header
is browser-enforced, not authentication, but a sloppy matcher turns a demo allow-list into "any
site whose name contains mine", so every comparison is made on parsed parts, never on raw string
prefixes or suffixes. The decisions, in the order a reader would ask about them:

Patterns (``parse_pattern``, refused at registration with :class:`InvalidOriginPattern`)
    * Three forms: exact ``https://demo.mysite.com``, subdomain wildcard ``https://*.mysite.com``,
      any port ``http://localhost:*`` (the two can combine: ``https://*.mysite.com:*``).
    * A scheme is required and must be ``http`` or ``https``; ``null`` and opaque schemes are refused.
    * One trailing ``/`` is tolerated (``https://x.com/`` is ``https://x.com``). Any other path, a
      query, a fragment, userinfo (``@``), a backslash, percent-encoding or whitespace is refused.
    * Scheme and host are case-insensitive and stored lower-case. Unicode hosts are converted to
      A-labels with the stdlib IDNA codec (RFC 3490), so ``https://bücher.example`` matches the header
      ``https://xn--bcher-kva.example``. That codec is IDNA2003, whereas browsers use UTS #46
      (WHATWG URL "domain to ASCII"); the two disagree on the deviation characters ß, ς, ZWJ and
      ZWNJ, so patterns containing them are refused with a request to write the ``xn--`` form.
      The ideographic and full-width full stops (U+3002, U+FF0E, U+FF61) are refused rather than
      silently treated as dots.
    * A trailing dot is normalised away (``https://x.com.`` is ``https://x.com``).
    * No port means the scheme's default port only (80/443, RFC 6454 §4); ``:443`` on https is
      the same pattern; ``:*`` means any port. Ports are 1-65535, decimal, no leading zeros.
    * ``*`` is allowed only as the entire leftmost label. ``*.mysite.com`` matches any depth
      (``a.mysite.com``, ``a.b.mysite.com``) but NOT the apex ``mysite.com``: list it separately.
      A wildcard directly over a single label (``*.com``, ``*.localhost``), over an IP address, or
      over a public suffix of the Public Suffix List, private section included (``*.co.uk``,
      ``*.github.io``, ``*.run.app``, ``*.s3.amazonaws.com``...; :func:`is_public_suffix`) is
      refused: it would admit unrelated sites.
    * IP literals are allowed as exact hosts (``http://127.0.0.1:*``, ``http://[::1]:3000``).
    * Hosts are validated: LDH labels of 1-63 characters, no leading/trailing hyphen, no empty
      label, at most 253 characters, ``xn--`` labels must be valid Punycode. Underscores are refused.
      A host whose last label is numeric is an IPv4 address (WHATWG URL "ends in a number") and
      must be written in dotted-decimal form.
    * ``parse_patterns`` takes the JSON value as received: a list of at most 100 strings.

Origin headers (``parse_origin``, returns ``None`` for anything that is not a serialised origin)
    * The accepted grammar is the RFC 6454 §6.2 ASCII serialisation ``scheme "://" host [":" port]``
      as browsers emit it (WHATWG HTML "serialization of an origin"). A path, a trailing slash,
      userinfo, a query, a fragment, whitespace, control characters, percent-encoding or any
      non-ASCII character means it was not sent by a browser: ``None``, which matches nothing.
      Unicode hosts are therefore NOT converted here: browsers always send A-labels, and the
      IDNA codec would turn look-alike dots (``demo。mysite.com``) into real ones.
    * ``"null"`` (opaque origins: sandboxed frames, ``file:``, ``data:``) and non-http(s) schemes
      (``ws:``, ``chrome-extension:``) give ``None``.
    * Scheme and host are lower-cased; an explicit default port (``https://x.com:443``) is the
      same origin as ``https://x.com``.
    * A trailing dot (``https://x.com.``) is a different origin from ``https://x.com`` (browsers
      keep the dot and give it separate storage and cookies). Patterns cannot name it, so it is
      refused (``None``) and never matches.
    * Hosts follow the same label rules as patterns; an IPv4 host must be canonical dotted
      decimal (``http://0x7f.0.0.1`` is not what a browser sends); an IPv6 host is bracketed and
      normalised to its RFC 5952 text form.
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from server.errors import InvalidOriginPattern

__all__ = [
    "DEFAULT_PORTS",
    "MAX_PATTERNS",
    "Origin",
    "OriginPattern",
    "is_public_suffix",
    "matched_pattern",
    "origin_allowed",
    "parse_origin",
    "parse_pattern",
    "parse_patterns",
]

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}
MAX_PATTERNS = 100
# The longest valid origin is "https://" + 253-character host + ":65535"; anything longer is not one.
_MAX_LENGTH = 300


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List, ICANN and private sections (``*.run.app``, ``*.s3.amazonaws.com``,
    ``*.co.uk``...), as shipped by the ``publicsuffixlist`` package (updated with each release).
    Loaded on the first wildcard pattern (~0.1 s), not at import."""
    return PublicSuffixList()


def is_public_suffix(host: str) -> bool:
    """True when ``host`` (A-labels) is a suffix under which unrelated parties register names."""
    return bool(_public_suffixes().is_public(host))


# RFC 3490 §3.1 lets these stand for "." in a Unicode host; the stdlib codec honours that, so a
# pattern containing them would not mean what it looks like.
_DOT_LOOKALIKES = frozenset("\u3002\uff0e\uff61")
# IDNA2003 maps these (sharp s -> ss, final sigma -> sigma, ZWJ/ZWNJ -> nothing); UTS #46, which
# browsers use, keeps them.
_IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_HEX_NUMBER = re.compile(r"0x[0-9a-f]*")


@dataclass(frozen=True, slots=True)
class Origin:
    """A parsed browser origin; build one with :func:`parse_origin`."""

    scheme: str  # "http" | "https"
    host: str  # lower-case A-label domain, dotted IPv4, or bracketed IPv6 "[::1]"; no trailing dot
    port: int  # explicit or the scheme's default

    def __str__(self) -> str:
        """The RFC 6454 §6.2 serialisation: the default port is omitted."""
        if self.port == DEFAULT_PORTS[self.scheme]:
            return f"{self.scheme}://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class OriginPattern:
    """One validated ``allowed_origins`` entry; build one with :func:`parse_pattern`."""

    raw: str
    scheme: str
    host: str  # for a wildcard pattern: the parent domain, e.g. "mysite.com"
    wildcard: bool  # "*.mysite.com": any subdomain of host, at any depth, never host itself
    port: int | None  # None = any port ("http://localhost:*")

    def matches(self, origin: Origin) -> bool:
        if origin.scheme != self.scheme:
            return False
        if self.port is not None and origin.port != self.port:
            return False
        if self.wildcard:
            # Hosts are validated label sequences, so "." + parent is a whole-label boundary.
            return origin.host.endswith("." + self.host)
        return origin.host == self.host


class _Reject(ValueError):
    """Internal: why a host, port or authority is not acceptable."""


def parse_origin(value: str | None) -> Origin | None:
    """Parse an ``Origin`` header value; ``None`` when missing, ``null``, non-http(s) or malformed."""
    if value is None or len(value) > _MAX_LENGTH or not _VISIBLE_ASCII.fullmatch(value):
        return None
    scheme, sep, authority = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        return None
    try:
        host_text, port = _split_authority(authority, allow_any_port=False)
        host = _ascii_host(host_text.lower())
    except _Reject:
        return None
    return Origin(scheme, host, DEFAULT_PORTS[scheme] if port is None else port)


def parse_pattern(raw: str) -> OriginPattern:
    """Validate one ``allowed_origins`` entry; raises :class:`InvalidOriginPattern` saying why."""
    try:
        return _parse_pattern(raw)
    except _Reject as exc:
        shown = raw if len(raw) <= 100 else raw[:100] + "..."
        raise InvalidOriginPattern(f"invalid allowed_origins pattern {shown!r}: {exc}") from None


def parse_patterns(raws: object) -> tuple[OriginPattern, ...]:
    """Validate the ``allowed_origins`` JSON value: a list of at most 100 pattern strings."""
    if not isinstance(raws, (list, tuple)):
        raise InvalidOriginPattern(f"allowed_origins must be a list of strings, not {type(raws).__name__}")
    if len(raws) > MAX_PATTERNS:
        raise InvalidOriginPattern(f"allowed_origins has {len(raws)} entries; at most {MAX_PATTERNS} allowed")
    patterns = []
    for index, raw in enumerate(raws):
        if not isinstance(raw, str):
            raise InvalidOriginPattern(f"allowed_origins[{index}] must be a string, not {type(raw).__name__}")
        patterns.append(parse_pattern(raw))
    return tuple(patterns)


def origin_allowed(patterns: Sequence[OriginPattern], header: str | None) -> Origin | None:
    """The parsed origin when some pattern matches the ``Origin`` header, else ``None``."""
    origin = parse_origin(header)
    if origin is None:
        return None
    return origin if any(pattern.matches(origin) for pattern in patterns) else None


def matched_pattern(patterns: Sequence[OriginPattern], origin: Origin) -> OriginPattern | None:
    """The first pattern that lets ``origin`` in: what a public rate-limit bucket is keyed by,
    so rotating subdomains of ``*.x.com`` or ports of ``http://localhost:*`` share one bucket."""
    return next((pattern for pattern in patterns if pattern.matches(origin)), None)


def _parse_pattern(raw: str) -> OriginPattern:
    if not raw:
        raise _Reject("empty pattern")
    if len(raw) > _MAX_LENGTH:
        raise _Reject(f"longer than {_MAX_LENGTH} characters")
    if any(char.isspace() or not char.isprintable() for char in raw):
        raise _Reject("whitespace or control characters are not allowed")
    scheme, sep, rest = raw.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _Reject("a scheme is required, e.g. 'https://example.com'")
    if scheme not in DEFAULT_PORTS:
        raise _Reject(f"scheme must be http or https, not {scheme!r}")
    for char, part in (("@", "userinfo"), ("?", "a query"), ("#", "a fragment"), ("\\", "a backslash")):
        if char in rest:
            raise _Reject(f"{part} is not allowed; write scheme://host[:port]")
    if rest.endswith("/"):
        rest = rest[:-1]  # "https://x.com/" is how people copy an origin from the address bar
    if "/" in rest:
        raise _Reject("a path is not allowed; write scheme://host[:port]")
    if "%" in rest:
        raise _Reject("percent-encoding is not allowed in a host")
    host_text, port = _split_authority(rest, allow_any_port=True)
    if port == -1:
        port_or_any: int | None = None
    else:
        port_or_any = DEFAULT_PORTS[scheme] if port is None else port

    host_text = host_text.lower()
    if host_text in ("*", "*."):
        raise _Reject("'*' alone would allow every site; name a parent domain, as in 'https://*.example.com'")
    wildcard = host_text.startswith("*.")
    if wildcard:
        host_text = host_text[2:]
    if "*" in host_text:
        raise _Reject("'*' is only allowed as the whole leftmost label, as in 'https://*.example.com'")
    if host_text.endswith(".") and not host_text.startswith("["):
        host_text = host_text[:-1]  # an absolute name (RFC 1034 §3.1): the owner means the same host
    host = _ascii_host(_to_ascii(host_text))
    if wildcard:
        _check_wildcard_parent(host)
    return OriginPattern(raw=raw, scheme=scheme, host=host, wildcard=wildcard, port=port_or_any)


def _split_authority(authority: str, *, allow_any_port: bool) -> tuple[str, int | None]:
    """Split ``host[:port]``; the port is None when absent and -1 for ``:*`` (patterns only)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise _Reject("unclosed '[' in IPv6 host")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _Reject("unexpected text after IPv6 host")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_or_empty = authority.partition(":")
        port_text = port_text_or_empty if sep else None
        if port_text is not None and ":" in port_text:
            raise _Reject("an IPv6 host must be in brackets, e.g. 'http://[::1]:3000'")
    if not host:
        raise _Reject("empty host")
    if port_text is None:
        return host, None
    if port_text == "*" and allow_any_port:
        return host, -1
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise _Reject(f"port {port_text!r} is not a number from 1 to 65535 (or '*')")
    return host, int(port_text)


def _to_ascii(host: str) -> str:
    """Convert a Unicode pattern host to A-labels (RFC 3490 ToASCII, label by label)."""
    if host.isascii():
        return host
    if _DOT_LOOKALIKES & set(host):
        raise _Reject("use '.' to separate labels, not a look-alike full stop")
    if _IDNA_DEVIATIONS & set(host):
        raise _Reject(
            "contains ß, ς, ZWJ or ZWNJ, which IDNA versions convert differently; write the xn-- form"
        )
    labels = []
    for label in host.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            converted = encodings.idna.ToASCII(label).decode("ascii")
        except UnicodeError as exc:
            raise _Reject(f"label {label!r} is not a valid internationalised name ({exc})") from None
        if "." in converted:  # NFKC folds e.g. U+2024 ONE DOT LEADER into "."
            raise _Reject("use '.' to separate labels, not a look-alike full stop")
        labels.append(converted)
    return ".".join(labels).lower()


def _ascii_host(host: str) -> str:
    """Validate a lower-case ASCII host and return its canonical form."""
    if host.startswith("["):
        return _ipv6_host(host)
    if len(host) > 253:
        raise _Reject("host is longer than 253 characters")
    labels = host.split(".")
    for label in labels:
        _check_label(label)
    last = labels[-1]
    if last.isdigit() or _HEX_NUMBER.fullmatch(last):
        # WHATWG URL host parsing: a host that "ends in a number" is an IPv4 address, and a
        # browser serialises it in dotted decimal, so that is the only form we accept.
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise _Reject(f"{host!r} ends in a number but is not a dotted-decimal IPv4 address") from None
        if str(address) != host:
            raise _Reject(f"IPv4 address {host!r} is not in canonical dotted-decimal form")
    return host


def _check_label(label: str) -> None:
    if not label:
        raise _Reject("host has an empty label")
    if len(label) > 63:
        raise _Reject(f"label {label[:20]!r}... is longer than 63 characters")
    if not _LDH_LABEL.fullmatch(label):
        raise _Reject(
            f"label {label!r} must be letters, digits and inner hyphens (no leading or trailing hyphen)"
        )
    if label.startswith("xn--"):
        # An A-label must decode (RFC 3492) to printable text; "xn--abc" decodes to C1 controls.
        try:
            decoded = label[4:].encode("ascii").decode("punycode")
        except UnicodeError:
            decoded = ""
        if not decoded.isprintable() or decoded.isascii():
            raise _Reject(f"label {label!r} is not valid Punycode")


def _ipv6_host(host: str) -> str:
    inner = host[1:-1]
    if "%" in inner:
        raise _Reject("IPv6 zone identifiers are not allowed")
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        raise _Reject(f"{host!r} is not a valid IPv6 address") from None
    return f"[{address.compressed}]"


def _check_wildcard_parent(parent: str) -> None:
    if parent.startswith("[") or _is_ipv4(parent):
        raise _Reject("a wildcard cannot cover an IP address; list the address itself")
    if "." not in parent:
        raise _Reject(f"'*.{parent}' covers every site under a top-level name; name your own domain")
    if is_public_suffix(parent):
        raise _Reject(f"'{parent}' is a public suffix shared by unrelated sites; name your own subdomain")


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True
