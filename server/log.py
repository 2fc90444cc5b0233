"""Structured logs, one line per request or event, with secrets redacted.

The redaction filter sits on every handler we install (ours and uvicorn's), so a token in a
query string (``/chat/ws?token=...``, CONTRACT §4), an ``api_key`` field or an
``Authorization`` header never reaches a log line, whoever logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_PATTERNS = [
    # token=..., api_key=..., access_token=..., hub.verify_token=... in query strings or text
    (
        re.compile(r"((?:^|[?&\s\"'])(?:[\w.]*token|api_key|apikey|secret|app_secret)=)[^&\s\"']+", re.I),
        r"\1[redacted]",
    ),
    # "api_key": "...", "accessToken": "...", "appSecret": "..." in JSON-ish text
    (
        re.compile(
            r"(\"(?:api_key|apiKey|token|accessToken|access_token|appSecret|app_secret|verifyToken|verify_token)\""
            r"\s*:\s*\")[^\"]*\"",
            re.I,
        ),
        r'\1[redacted]"',
    ),
    (re.compile(r"(authorization\s*[:=]\s*['\"]?(?:bearer\s+)?)[^\s'\",}]+", re.I), r"\1[redacted]"),
    (re.compile(r"\b(sk_live_|pk_publishable_|wrtc_|cht_|stm_)[A-Za-z0-9_\-.]+"), r"\1[redacted]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_SECRET_FIELDS = frozenset(
    {
        "api_key",
        "apikey",
        "token",
        "authorization",
        "access_token",
        "accesstoken",
        "app_secret",
        "appsecret",
        "verify_token",
        "verifytoken",
        "secret",
        "password",
    }
)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {
                k: "[redacted]" if k.lower() in _SECRET_FIELDS else redact(v) if isinstance(v, str) else v
                for k, v in fields.items()
            }
        return True


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
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, "%H:%M:%S")
        base = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + redact(self.formatException(record.exc_info))
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
