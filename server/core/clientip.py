"""The client address of a request, trusting ``X-Forwarded-For`` only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_ip(peer: str | None, forwarded_for: str | None, proxies: Sequence[IpNetwork]) -> str:
    """Walk ``X-Forwarded-For`` from the right while hops are trusted proxies (RFC 7239 §5.2).

    The first untrusted hop is the client; a header from an untrusted peer is ignored,
    since anyone can send one.
    """
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, proxies):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # a malformed hop: stop at the last address we can vouch for
        address = hop
        if not _trusted(hop, proxies):
            return hop
    return address
