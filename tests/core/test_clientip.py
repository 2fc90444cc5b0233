"""X-Forwarded-For is believed only from trusted proxies."""

from __future__ import annotations

import ipaddress

from server.core.clientip import client_ip

PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)


def test_untrusted_peer_header_is_ignored() -> None:
    assert client_ip("203.0.113.9", "1.2.3.4", PROXIES) == "203.0.113.9"


def test_trusted_proxy_gives_the_client() -> None:
    assert client_ip("10.0.0.2", "198.51.100.7", PROXIES) == "198.51.100.7"


def test_spoofed_leftmost_entries_are_not_believed() -> None:
    """A client can prepend anything; the rightmost untrusted hop is the client."""
    assert client_ip("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.5", PROXIES) == "198.51.100.7"


def test_malformed_hops_stop_the_walk() -> None:
    assert client_ip("10.0.0.2", "garbage", PROXIES) == "10.0.0.2"


def test_no_peer() -> None:
    assert client_ip(None, None, PROXIES) == "unknown"
