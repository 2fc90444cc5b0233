"""Structured logs, one line per request or event, with secrets redacted.

The redaction filter sits on every handler we install (ours and uvicorn's, which also carries
websockets' DEBUG lines), so a token in a query string (``/chat/ws?token=...``, CONTRACT §4), a
secret field of a frame or of ``fields`` (``api_key``, ``verifyToken``, ``app_secret``...) or a
header off the allow-list (``Cookie``, ``X-Api-Key``, ``Authorization``) never reaches a log
line, whoever logged it. What counts as secret is :mod:`server.core.redaction`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from server.core.redaction import header_value, redact_data, redact_frame, redact_text

# websockets logs each handshake header as ("< %s: %s", name, value) or ("> %s: %s", ...).
_HEADER_LINE = re.compile(r"^[<>] %s: %s$")
_DATA_OPCODES = frozenset({"TEXT", "BINARY", "CONT"})


class RedactingFilter(logging.Filter):
    """Redact a record before any handler formats it: its arguments and ``fields`` by field name
    (nested too), headers by allow-list, websockets frames before they are elided, then the
    formatted message by :func:`~server.core.redaction.redact_text`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = self._message(record)
        except Exception:  # a record we cannot format safely is dropped to its bare format string
            message = f"{record.msg!s} [arguments not logged: they could not be redacted]"
        record.msg, record.args = redact_text(message), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = redact_data(fields)
        return True

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        args = record.args
        if not args:
            return str(record.msg)
        if isinstance(args, Mapping):
            record.args = redact_data(args)
        elif isinstance(record.msg, str) and len(args) == 2 and _HEADER_LINE.match(record.msg):
            record.args = (args[0], header_value(str(args[0]), str(args[1])))
        else:
            record.args = tuple(_argument(arg) for arg in args)
        return record.getMessage()


def _argument(arg: object) -> object:
    """A log argument with its secrets redacted; strings are left to the message pass."""
    if isinstance(arg, Mapping | list | tuple):
        return redact_data(arg)
    opcode, data = getattr(getattr(arg, "opcode", None), "name", None), getattr(arg, "data", None)
    if opcode in _DATA_OPCODES and isinstance(data, bytes | bytearray | memoryview):
        return redact_frame(opcode, bytes(data), bool(getattr(arg, "fin", True)))  # websockets Frame
    return arg


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, "%H:%M:%S")
        base = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + redact_text(self.formatException(record.exc_info))
        return base


def setup(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Chatty libraries stay at WARNING unless asked for DEBUG.
    for name in ("aioice", "aiortc", "websockets"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured line: ``message`` plus key/value ``fields``."""
    logger.log(level, message, extra={"fields": fields})
