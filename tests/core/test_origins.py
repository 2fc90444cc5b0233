"""Origin parsing and ``allowed_origins`` matching (server/core/origins.py, CONTRACT §5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core.origins import (
    MAX_PATTERNS,
    Origin,
    OriginPattern,
    matched_pattern,
    origin_allowed,
    parse_origin,
    parse_pattern,
    parse_patterns,
)
from server.errors import InvalidOriginPattern

# The contract's example allow-list; every hostile origin below is judged against it.
PATTERNS = parse_patterns(["https://demo.mysite.com", "https://*.mysite.com", "http://localhost:*"])

HOSTILE_ORIGINS = [
    # Suffix and prefix tricks on the raw string.
    "https://mysite.com.evil.com",
    "https://demo.mysite.com.evil.com",
    "https://evilmysite.com",
    "https://demo-mysite.com",
    "https://demo.mysite.co",
    "https://demo.mysite.comevil",
    "https://demo.mysite.c0m",
    "https://mysite.co",
    # The apex is not covered by "*.mysite.com".
    "https://mysite.com",
    "https://mysite.com:443",
    "https://MYSITE.COM",
    # Wrong scheme, wrong port.
    "http://demo.mysite.com",
    "HTTP://DEMO.MYSITE.COM",
    "http://a.mysite.com:443",
    "https://demo.mysite.com:8443",
    "https://demo.mysite.com:80",
    "https://localhost:3000",
    "https://localhost",
    "ws://demo.mysite.com",
    "wss://demo.mysite.com",
    "ftp://demo.mysite.com",
    "blob:https://demo.mysite.com",
    "chrome-extension://abcdefghijklmnop",
    # Opaque and empty origins.
    "null",
    "NULL",
    "",
    "file://",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "data:text/html,hi",
    "about:blank",
    # Trailing dot: a different origin that patterns cannot name.
    "https://demo.mysite.com.",
    "https://mysite.com.",
    "http://localhost.:3000",
    # Userinfo, path, query, fragment, backslash: never part of a serialised origin.
    "https://demo.mysite.com@evil.com",
    "https://user:pass@demo.mysite.com",
    "https://demo.mysite.com:443@evil.com",
    "https://evil.com#.mysite.com",
    "https://evil.com?.mysite.com",
    "https://evil.com/.mysite.com",
    "https://evil.com\\.mysite.com",
    "https://evil.com/https://demo.mysite.com",
    "https://demo.mysite.com/",
    "https://demo.mysite.com/path",
    "http://localhost:3000/",
    # Percent-encoding.
    "https://evil%2emysite.com",
    "https://evil%2Emysite.com",
    "https://demo%2Emysite%2Ecom",
    "https://evil.com%2f.mysite.com",
    "https://demo.mysite.com%00.evil.com",
    # Unicode look-alike dots and homoglyphs.
    "https://demo\u3002mysite\u3002com",
    "https://demo\uff0emysite\uff0ecom",
    "https://demo\uff61mysite\uff61com",
    "https://evil\u3002mysite.com",
    "https://demo.mysit\u0435.com",  # Cyrillic ie
    "https://demo.xn--mysit-3we.com",  # the same homoglyph, as a browser would send it
    "https://\uff44\uff45\uff4d\uff4f.mysite.com",  # full-width "demo"
    "https://demo.mysite.com\u200b",
    "https://demo.mysite.com\u2028",
    "https://d\u0435mo.mysite.com",
    # Whitespace and header injection.
    " https://demo.mysite.com",
    "https://demo.mysite.com ",
    "https://demo.mysite.com\t",
    "https://demo.mysite.com\n",
    "https://demo.mysite.com\r\nX-Evil: 1",
    "https://demo.mysite.com\x00",
    "https://demo.mysite.com, https://evil.com",
    "https://evil.com https://demo.mysite.com",
    # Malformed hosts.
    "https://.mysite.com",
    "https://..mysite.com",
    "https://a..mysite.com",
    "https://*.mysite.com",
    "https://-a.mysite.com",
    "https://a-.mysite.com",
    "https://a_b.mysite.com",
    "https://xn--.mysite.com",
    "https://xn--zz.mysite.com",
    "https://xn--abc.mysite.com",
    "https://xn--abc-.mysite.com",
    "https://[demo.mysite.com]",
    "https://" + "a" * 64 + ".mysite.com",
    # Malformed separators.
    "https:demo.mysite.com",
    "https:/demo.mysite.com",
    "//demo.mysite.com",
    "demo.mysite.com",
    "https://demo.mysite.com:",
    "https://demo.mysite.com:0443",
    "https://demo.mysite.com:443:443",
    # localhost look-alikes and other loopback names.
    "http://localhost.evil.com",
    "http://localhost.evil.com:3000",
    "http://LOCALHOST.evil.com",
    "http://evil-localhost:3000",
    "http://localhostevil:3000",
    "http://127.0.0.1",
    "http://127.0.0.1:3000",
    "http://[::1]:3000",
    "http://[::ffff:127.0.0.1]:3000",
    "http://0x7f.0.0.1:3000",
    # Bad ports on the any-port pattern.
    "http://localhost:0",
    "http://localhost:65536",
    "http://localhost:99999999999",
    "http://localhost:08x",
    "http://localhost:3000x",
    "http://localhost:-1",
    "http://localhost:+80",
    "http://localhost: 3000",
    "http://localhost:*",
]

MATCHING_ORIGINS = [
    ("https://demo.mysite.com", "https://demo.mysite.com"),
    ("https://DEMO.MYSITE.COM", "https://demo.mysite.com"),
    ("HTTPS://Demo.MySite.Com", "https://demo.mysite.com"),
    ("https://demo.mysite.com:443", "https://demo.mysite.com"),
    ("https://a.mysite.com", "https://a.mysite.com"),
    ("https://a.b.c.mysite.com", "https://a.b.c.mysite.com"),
    ("https://0.mysite.com", "https://0.mysite.com"),
    ("https://a-b.mysite.com", "https://a-b.mysite.com"),
    ("https://xn--bcher-kva.mysite.com", "https://xn--bcher-kva.mysite.com"),
    ("https://XN--BCHER-KVA.mysite.com", "https://xn--bcher-kva.mysite.com"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("http://localhost", "http://localhost"),
    ("http://localhost:80", "http://localhost"),
    ("http://LOCALHOST:5173", "http://localhost:5173"),
    ("http://localhost:1", "http://localhost:1"),
    ("http://localhost:65535", "http://localhost:65535"),
]


@pytest.mark.parametrize("header", HOSTILE_ORIGINS)
def test_hostile_origin_never_matches(header: str) -> None:
    """No trick on the raw string gets past the contract's example allow-list."""
    assert origin_allowed(PATTERNS, header) is None


def test_hostile_table_is_large_enough() -> None:
    """The brief asks for at least sixty hostile origins."""
    assert len(set(HOSTILE_ORIGINS)) >= 60


@pytest.mark.parametrize(("header", "normalised"), MATCHING_ORIGINS)
def test_allowed_origin_matches_and_is_normalised(header: str, normalised: str) -> None:
    """Case, an explicit default port, any-port patterns and deep subdomains all match."""
    origin = origin_allowed(PATTERNS, header)
    assert origin is not None
    assert str(origin) == normalised


def test_missing_header_never_matches() -> None:
    assert origin_allowed(PATTERNS, None) is None


def test_no_patterns_allow_nothing() -> None:
    assert origin_allowed((), "https://demo.mysite.com") is None


# -- parse_origin --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("https://example.com", Origin("https", "example.com", 443)),
        ("http://example.com", Origin("http", "example.com", 80)),
        ("https://example.com:443", Origin("https", "example.com", 443)),
        ("https://example.com:80", Origin("https", "example.com", 80)),
        ("HTTP://EXAMPLE.COM:8080", Origin("http", "example.com", 8080)),
        ("http://127.0.0.1:3000", Origin("http", "127.0.0.1", 3000)),
        ("http://[::1]:3000", Origin("http", "[::1]", 3000)),
        ("http://[0:0:0:0:0:0:0:1]", Origin("http", "[::1]", 80)),
        ("http://[FE80::A]", Origin("http", "[fe80::a]", 80)),
        ("https://xn--bcher-kva.example", Origin("https", "xn--bcher-kva.example", 443)),
    ],
)
def test_parse_origin_normalises_valid_serialisations(header: str, expected: Origin) -> None:
    """Scheme and host are lower-cased, default ports filled in, IPv6 put in RFC 5952 form."""
    assert parse_origin(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "null",
        "https://example.com/",
        "https://example.com/path",
        "https://user@example.com",
        "https://example.com?q",
        "https://example.com#f",
        " https://example.com",
        "https://example.com.",
        "https://b\u00fccher.example",  # browsers send the A-label, never Unicode
        "https://example.com:0",
        "https://example.com:65536",
        "https://example.com:08x",
        "https://example.com:00443",
        "http://127.1",
        "http://0x7f.0.0.1",
        "http://127.000.0.1",
        "http://[::1",
        "http://[::1]x",
        "http://[fe80::1%25eth0]",
        "http://[1.2.3.4]",
        "http://::1",
        "https://a.1",
        "https://" + ".".join(["a" * 63] * 4) + ".com",  # longer than 253
        "ws://example.com",
        "https://",
        "https://:443",
    ],
)
def test_parse_origin_refuses_what_a_browser_never_sends(header: str | None) -> None:
    assert parse_origin(header) is None


def test_origin_str_omits_only_the_default_port() -> None:
    assert str(Origin("https", "x.com", 443)) == "https://x.com"
    assert str(Origin("https", "x.com", 80)) == "https://x.com:80"
    assert str(Origin("http", "[::1]", 3000)) == "http://[::1]:3000"


def test_trailing_dot_header_is_a_different_origin() -> None:
    """``https://x.com.`` is its own origin to a browser; since no pattern can name it, it never matches."""
    assert origin_allowed(parse_patterns(["https://x.com", "https://x.com."]), "https://x.com.") is None


# -- parse_pattern ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "scheme", "host", "wildcard", "port"),
    [
        ("https://demo.mysite.com", "https", "demo.mysite.com", False, 443),
        ("https://demo.mysite.com/", "https", "demo.mysite.com", False, 443),
        ("https://demo.mysite.com:443", "https", "demo.mysite.com", False, 443),
        ("https://demo.mysite.com.", "https", "demo.mysite.com", False, 443),
        ("HTTPS://Demo.MySite.COM:8443/", "https", "demo.mysite.com", False, 8443),
        ("http://demo.mysite.com", "http", "demo.mysite.com", False, 80),
        ("https://*.mysite.com", "https", "mysite.com", True, 443),
        ("https://*.mysite.com:*", "https", "mysite.com", True, None),
        ("https://*.a.b.mysite.com", "https", "a.b.mysite.com", True, 443),
        ("https://*.myname.github.io", "https", "myname.github.io", True, 443),
        ("https://*.example.co.uk", "https", "example.co.uk", True, 443),
        ("http://localhost:*", "http", "localhost", False, None),
        ("http://localhost:3000", "http", "localhost", False, 3000),
        ("http://127.0.0.1:*", "http", "127.0.0.1", False, None),
        ("http://[::1]:3000", "http", "[::1]", False, 3000),
        ("http://[0::1]:*/", "http", "[::1]", False, None),
        ("https://b\u00fccher.example", "https", "xn--bcher-kva.example", False, 443),
        ("https://*.b\u00fccher.example", "https", "xn--bcher-kva.example", True, 443),
        ("https://\uff24\uff25\uff2d\uff2f.example", "https", "demo.example", False, 443),  # NFKC, as UTS 46
        ("https://xn--bcher-kva.example", "https", "xn--bcher-kva.example", False, 443),
        ("https://github.io", "https", "github.io", False, 443),
        ("https://a:65535", "https", "a", False, 65535),
    ],
)
def test_parse_pattern_accepts_and_normalises(
    raw: str, scheme: str, host: str, wildcard: bool, port: int | None
) -> None:
    assert parse_pattern(raw) == OriginPattern(raw, scheme, host, wildcard, port)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty pattern"),
        ("mysite.com", "scheme is required"),
        ("*.mysite.com", "scheme is required"),
        ("//mysite.com", "scheme is required"),
        ("null", "scheme is required"),
        ("ws://mysite.com", "scheme must be http or https"),
        ("file:///tmp", "scheme must be http or https"),
        ("https://mysite.com/app", "path is not allowed"),
        ("https://mysite.com//", "path is not allowed"),
        ("https://mysite.com?x=1", "query is not allowed"),
        ("https://mysite.com#top", "fragment is not allowed"),
        ("https://user@mysite.com", "userinfo is not allowed"),
        ("https://mysite.com\\", "backslash is not allowed"),
        ("https://my%2esite.com", "percent-encoding"),
        (" https://mysite.com", "whitespace"),
        ("https://mysite.com\n", "whitespace"),
        ("https://", "empty host"),
        ("https://:443", "empty host"),
        ("https://*", "'*' alone"),
        ("https://*.", "'*' alone"),
        ("https://a*.mysite.com", "whole leftmost label"),
        ("https://*a.mysite.com", "whole leftmost label"),
        ("https://demo.*.mysite.com", "whole leftmost label"),
        ("https://*.*.mysite.com", "whole leftmost label"),
        ("https://*.com", "top-level"),
        ("http://*.localhost:*", "top-level"),
        ("https://*.co.uk", "public suffix"),
        ("https://*.com.au", "public suffix"),
        ("https://*.github.io", "public suffix"),
        ("https://*.vercel.app", "public suffix"),
        ("https://*.CO.UK/", "public suffix"),
        # The Public Suffix List's private section, which the built-in excerpt lacked:
        ("https://*.run.app", "public suffix"),
        ("https://*.s3.amazonaws.com", "public suffix"),
        ("https://*.eu-west-1.compute.amazonaws.com", "public suffix"),
        ("https://*.myshopify.com", "public suffix"),
        ("https://*.a.ck", "public suffix"),  # under the wildcard rule *.ck
        ("https://*.127.0.0.1", "IP address"),
        ("http://*.[::1]", "IPv6 host must be in brackets"),
        ("https://a..b.com", "empty label"),
        ("https://.mysite.com", "empty label"),
        ("https://mysite.com..", "empty label"),
        ("https://-a.com", "no leading or trailing hyphen"),
        ("https://a-.com", "no leading or trailing hyphen"),
        ("https://a_b.com", "letters, digits"),
        ("https://" + "a" * 64 + ".com", "longer than 63"),
        ("https://" + ".".join(["a" * 63] * 4) + ".com", "longer than 253"),
        ("https://xn--zz.com", "not valid Punycode"),
        ("https://xn--abc.com", "not valid Punycode"),
        ("https://xn--a!.com", "letters, digits"),
        ("https://stra\u00dfe.de", "write the xn-- form"),
        ("https://demo\u3002mysite.com", "look-alike full stop"),
        ("https://demo\uff0emysite.com", "look-alike full stop"),
        ("https://a\u2024b.com", "look-alike full stop"),  # NFKC turns ONE DOT LEADER into "."
        ("http://localhost:0", "port '0'"),
        ("http://localhost:65536", "port '65536'"),
        ("http://localhost:08x", "port '08x'"),
        ("http://localhost:0080", "port '0080'"),
        ("http://localhost:", "port ''"),
        ("http://localhost:**", "port '**'"),
        ("http://::1", "IPv6 host must be in brackets"),
        ("http://[::1", "unclosed"),
        ("http://[::1]x", "after IPv6 host"),
        ("http://[fe80::1%eth0]", "percent-encoding"),
        ("http://[1.2.3.4]", "not a valid IPv6"),
        ("http://127.1", "not a dotted-decimal IPv4"),
        ("http://0x7f.0.0.1", "not a dotted-decimal IPv4"),
        ("https://a." + "b" * 400, "longer than 300"),
    ],
)
def test_parse_pattern_refuses_with_reason(raw: str, reason: str) -> None:
    """Each bad pattern is refused and the detail names the pattern and says why."""
    with pytest.raises(InvalidOriginPattern) as info:
        parse_pattern(raw)
    assert reason in info.value.detail
    assert repr(raw[:100])[:-1] in info.value.detail


def test_parse_patterns_accepts_a_list_of_strings() -> None:
    patterns = parse_patterns(["https://a.com", "http://localhost:*"])
    assert [p.raw for p in patterns] == ["https://a.com", "http://localhost:*"]
    assert parse_patterns([]) == ()


@pytest.mark.parametrize(
    ("raws", "reason"),
    [
        ("https://a.com", "must be a list"),
        ({"https://a.com": 1}, "must be a list"),
        (None, "must be a list"),
        (["https://a.com", 3], "allowed_origins[1] must be a string"),
        ([None], "allowed_origins[0] must be a string"),
        (["https://a.com"] * (MAX_PATTERNS + 1), "at most 100"),
        (["https://a.com", "https://*.com"], "'https://*.com'"),
    ],
)
def test_parse_patterns_refuses_bad_values(raws: object, reason: str) -> None:
    with pytest.raises(InvalidOriginPattern) as info:
        parse_patterns(raws)
    assert reason in info.value.detail


def test_hundred_patterns_are_accepted() -> None:
    assert len(parse_patterns([f"https://a{i}.com" for i in range(MAX_PATTERNS)])) == MAX_PATTERNS


# -- matching semantics ----------------------------------------------------------------------------------


def test_idn_pattern_matches_its_punycode_header() -> None:
    """A Unicode pattern is stored as A-labels, which is what browsers put in the header."""
    assert origin_allowed([parse_pattern("https://b\u00fccher.example")], "https://xn--bcher-kva.example")


def test_wildcard_does_not_match_apex() -> None:
    pattern = parse_pattern("https://*.mysite.com")
    assert not pattern.matches(Origin("https", "mysite.com", 443))
    assert pattern.matches(Origin("https", "a.b.mysite.com", 443))


def test_pattern_without_port_matches_only_default_port() -> None:
    pattern = parse_pattern("https://x.com")
    assert pattern.matches(Origin("https", "x.com", 443))
    assert not pattern.matches(Origin("https", "x.com", 8443))


def test_explicit_port_pattern_matches_only_that_port() -> None:
    pattern = parse_pattern("http://localhost:3000")
    assert origin_allowed([pattern], "http://localhost:3000")
    assert not origin_allowed([pattern], "http://localhost:3001")
    assert not origin_allowed([pattern], "http://localhost")


def test_ip_literal_patterns_match_exactly() -> None:
    patterns = parse_patterns(["http://127.0.0.1:*", "http://[::1]:3000"])
    assert origin_allowed(patterns, "http://127.0.0.1:8000")
    assert origin_allowed(patterns, "http://[::1]:3000")
    assert origin_allowed(patterns, "http://[0:0::1]:3000")
    assert not origin_allowed(patterns, "http://127.0.0.2:8000")
    assert not origin_allowed(patterns, "http://[::1]:3001")
    assert not origin_allowed(patterns, "http://[::2]:3000")


# -- properties ------------------------------------------------------------------------------------------

labels = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z").filter(lambda s: not s.startswith("xn--"))
alpha_tlds = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6)
domains = st.builds(
    lambda parts, tld: ".".join([*parts, tld]), st.lists(labels, min_size=0, max_size=3), alpha_tlds
)
ALLOWED_BASES = ["https://demo.mysite.com", "https://a.b.mysite.com", "http://localhost"]


@given(st.one_of(st.text(), labels))
def test_property_label_over_foreign_domain_never_matches(label: str) -> None:
    """``https://<label>.mysite.com.evil.com`` never matches, whatever the label."""
    assert origin_allowed(PATTERNS, f"https://{label}.mysite.com.evil.com") is None


@given(st.sampled_from(ALLOWED_BASES), st.text(min_size=1).filter(lambda s: s[0] not in ".:"))
def test_property_text_glued_to_an_allowed_host_never_matches(base: str, suffix: str) -> None:
    """Appending anything to an allowed host without a dot (or port) boundary leaves the allow-list."""
    assert origin_allowed(PATTERNS, base) is not None
    assert origin_allowed(PATTERNS, base + suffix) is None


@given(
    st.sampled_from(["http", "https"]),
    st.one_of(domains, st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]")),
    st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
)
def test_property_serialisation_round_trips(scheme: str, host: str, port: int | None) -> None:
    """``str(parse_origin(x)) == x`` for any valid serialised origin (default port omitted)."""
    text = f"{scheme}://{host}" if port is None or port == (443 if scheme == "https" else 80) else ""
    text = text or f"{scheme}://{host}:{port}"
    origin = parse_origin(text)
    assert origin is not None
    assert str(origin) == text
    assert parse_origin(str(origin)) == origin


def _recase(text: str, mask: list[bool]) -> str:
    return "".join(
        c.upper() if upper else c for c, upper in zip(text, mask + [False] * len(text), strict=False)
    )


@given(
    st.one_of(
        st.sampled_from(ALLOWED_BASES + [b + ":3000" for b in ALLOWED_BASES]),
        domains.map("https://{}".format),
    ),
    st.lists(st.booleans(), max_size=40),
)
def test_property_matching_ignores_case_of_scheme_and_host(origin: str, mask: list[bool]) -> None:
    """Upper-casing any letters of the scheme or host never changes the verdict."""
    expected = origin_allowed(PATTERNS, origin)
    assert origin_allowed(PATTERNS, _recase(origin, mask)) == expected


@given(st.sampled_from(["http", "https"]), domains, st.one_of(st.none(), st.integers(1, 65535)))
def test_property_exact_pattern_matches_its_own_origin(scheme: str, host: str, port: int | None) -> None:
    """A pattern written as an origin matches that origin and only with its port."""
    raw = f"{scheme}://{host}" + ("" if port is None else f":{port}")
    pattern = parse_pattern(raw)
    assert origin_allowed([pattern], raw) is not None
    assert origin_allowed([pattern], raw + "0") is None


@given(st.integers(min_value=1, max_value=65535), st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True))
def test_the_matched_pattern_is_the_wildcard_whatever_subdomain_or_port(port: int, label: str) -> None:
    """Public rate limits key on the pattern that matched, which a client cannot rotate."""
    patterns = parse_patterns(["https://exact.example.org", "https://*.mysite.com", "http://localhost:*"])
    sub = parse_origin(f"https://{label}.mysite.com")
    local = parse_origin(f"http://localhost:{port}")
    assert sub is not None and local is not None
    assert matched_pattern(patterns, sub) == patterns[1]
    assert matched_pattern(patterns, local) == patterns[2]
    other = parse_origin(f"https://{label}.evil.com")
    assert other is not None and matched_pattern(patterns, other) is None
