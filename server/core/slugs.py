"""Agent id slugs (CONTRACT §1): ``Florencia`` and ``florencia`` name one agent.

Lower-case; ``_`` and spaces become ``-``; every other non-alphanumeric is dropped.
The same function runs on registration and on mint, so both sides always agree.
"""

from __future__ import annotations

import functools
import re

from server.errors import BadRequest

MAX_AGENT_ID = 128
_DROP = re.compile(r"[^a-z0-9-]")


@functools.lru_cache(maxsize=4096)  # on every mint; a handful of agent ids per node
def slugify(raw: str) -> str:
    """The canonical form of an agent id; may be empty when nothing usable is left."""
    lowered = raw.strip().lower().replace("_", "-").replace(" ", "-")
    return _DROP.sub("", lowered)


def agent_slug(raw: object) -> str:
    """Slugify a client-supplied agent id, refusing what cannot name an agent."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("agent_id is required")
    if len(raw) > MAX_AGENT_ID:
        raise BadRequest(f"agent_id is longer than {MAX_AGENT_ID} characters")
    slug = slugify(raw)
    if not slug:
        raise BadRequest(f"agent_id {raw!r} has no letters or digits")
    return slug
