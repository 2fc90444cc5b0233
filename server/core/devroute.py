"""Dev-mode caller routing (``agent.routeCallers([...])``, the SDK's ``dev.config {callers}``):
a dev agent that names callers is reached by those callers only (pinecall/sdk
docs/guides/dev-mode.md). Numbers compare by their digits: the SDK sends ``+34600111222``,
WhatsApp names the sender ``34600111222``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CONFIG_KEY = "dev_callers"  # where the list lives in the agent's record config (every node reads it)
MAX_CALLERS = 100
MAX_CALLER_CHARS = 128  # an E.164 number or a SIP address (sip:user@host;params)


def digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


def parse_callers(raw: object) -> list[str] | None:
    """The ``callers`` list as sent, or None when it is not a list of short strings."""
    if not isinstance(raw, list) or len(raw) > MAX_CALLERS:
        return None
    if not all(isinstance(c, str) and len(c) <= MAX_CALLER_CHARS for c in raw):
        return None
    # The SDK's dev-mode guide builds the list with DEV_CALLERS.split(","): a trailing comma
    # gives a blank entry, which names nobody and is dropped, not refused on every reconnect.
    # A SIP address (no digits) is kept; it matches no WhatsApp sender.
    return [c.strip() for c in raw if c.strip()]


def routed_callers(config: Mapping[str, Any]) -> frozenset[str]:
    """The digits of the callers an agent's config routes to it (empty: everyone reaches it)."""
    raw = config.get(CONFIG_KEY)
    callers: Iterable[object] = raw if isinstance(raw, list) else ()
    return frozenset(digits(c) for c in callers if isinstance(c, str))


def reaches(config: Mapping[str, Any], caller: str) -> bool:
    """Whether ``caller`` reaches the agent whose config this is."""
    routed = routed_callers(config)
    return not routed or digits(caller) in routed
