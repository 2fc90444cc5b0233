"""Strict JSON for everything a client sends (issue 15): what reaches an agent or the store is
JSON any other parser reads back the same way.

Refused, as :class:`ValueError` like any malformed JSON (every caller already answers that with a
clear 400, error frame or close code, never a 500):

* nesting deeper than :data:`MAX_DEPTH` (Python's parser would raise ``RecursionError`` on a deep
  enough ``[[[[…`` and the handler would answer 500);
* ``NaN``, ``Infinity`` and ``-Infinity``, which Python accepts but RFC 8259 §6 does not, so
  the SDK's ``JSON.parse`` fails on the frame that carries them;
* strings holding a lone UTF-16 surrogate (``"\\ud800"``): they cannot be encoded as UTF-8, so
  a frame carrying one could never be sent on to the agent (RFC 8259 §8.2).
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # far deeper than any frame, offer or webhook the clients and Meta send


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def loads(data: str | bytes) -> Any:
    """Parse ``data`` as strict JSON; ``ValueError`` for anything the module docstring refuses."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    _check(value)
    return value


def _check(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("JSON string holds a lone UTF-16 surrogate") from None
