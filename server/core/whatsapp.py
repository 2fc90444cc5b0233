"""WhatsApp Cloud API webhooks, without any socket (CONTRACT §7).

* Signatures: Meta signs every webhook POST with ``X-Hub-Signature-256: sha256=<hex>``, the
  HMAC-SHA256 of the **raw request bytes** keyed with the app secret. We verify those exact bytes
  (never re-serialised JSON: ``"\\u00e9"`` and ``"é"`` are different bytes) against a list of
  secrets, so a secret can rotate with old and new valid at once. Every comparison is
  :func:`hmac.compare_digest` and every secret is tried, so timing tells nothing.
* A verdict carries a reason (missing header, bad format, no match) for the log line; it never
  contains a secret or the presented signature.
* Payloads: Meta's ``{"object": "whatsapp_business_account", "entry": [{"changes": [{"value":
  {...}}]}]}``, turned into typed inbound messages and status updates. Shapes we do not know are
  skipped, never an error: Meta disables webhooks that keep failing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from server.core.text import utf8

SIGNATURE_HEADER = "X-Hub-Signature-256"
SIGNATURE_PREFIX = "sha256="
MAX_CHALLENGE = 256
MAX_TEXT = 4096  # WhatsApp's limit for a text message body
WINDOW_SECONDS = 24 * 3600  # Meta's customer-service window: free-form replies only within it
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9._\-]+$")


# -- signatures ---------------------------------------------------------------------------------
class Reason(StrEnum):
    OK = "ok"
    MISSING_HEADER = "missing header"
    BAD_FORMAT = "bad format"
    NO_MATCH = "no match"
    NO_SECRET = "no secret configured"  # noqa: S105 - a reason, not a secret


@dataclass(frozen=True, slots=True)
class SignatureVerdict:
    ok: bool
    reason: Reason
    detail: str = ""  # why the format is bad, e.g. "sha1= prefix"; never the value itself


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value Meta would send for ``body``."""
    return SIGNATURE_PREFIX + hmac.new(utf8(secret), body, hashlib.sha256).hexdigest()


def parse_signature(header: str | None) -> bytes | SignatureVerdict:
    """The 32 digest bytes of a header, or a verdict saying why it cannot be one."""
    if header is None or not header.strip():
        return SignatureVerdict(False, Reason.MISSING_HEADER)
    value = header.strip()
    prefix, sep, digest = value.partition("=")
    if not sep:
        return SignatureVerdict(False, Reason.BAD_FORMAT, "no 'sha256=' prefix")
    if prefix.lower() != "sha256":
        return SignatureVerdict(False, Reason.BAD_FORMAT, f"'{prefix[:10]}=' prefix, expected 'sha256='")
    if not _HEX.match(digest) or len(digest) % 2:
        return SignatureVerdict(False, Reason.BAD_FORMAT, "digest is not hex")
    if len(digest) != 64:
        return SignatureVerdict(False, Reason.BAD_FORMAT, f"digest has {len(digest)} hex digits, expected 64")
    return bytes.fromhex(digest)


def verify_signature(body: bytes, header: str | None, secrets: Sequence[str]) -> SignatureVerdict:
    """Check ``header`` against HMAC-SHA256(``body``) for each secret; any may match (rotation)."""
    if not secrets:
        return SignatureVerdict(False, Reason.NO_SECRET)
    presented = parse_signature(header)
    if isinstance(presented, SignatureVerdict):
        return presented
    matched = False
    for secret in secrets:  # no early exit: the time taken does not say which secret matched
        expected = hmac.new(utf8(secret), body, hashlib.sha256).digest()
        matched |= hmac.compare_digest(expected, presented)
    return SignatureVerdict(True, Reason.OK) if matched else SignatureVerdict(False, Reason.NO_MATCH)


def channel_secrets(channel: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The ``appSecret`` of a ``channel.add`` frame: a string, or a list while it rotates."""
    raw = channel.get("appSecret") if channel is not None else None
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list):
        return tuple(s for s in raw if isinstance(s, str) and s)
    return ()


# -- subscription check (GET) -------------------------------------------------------------------
def token_matches(presented: str, candidates: Iterable[str]) -> bool:
    """Constant-time comparison of a verify token against every candidate."""
    given = utf8(presented)
    found = False
    for candidate in candidates:
        if candidate:
            found |= hmac.compare_digest(given, utf8(candidate))
    return found


def token_digest(token: str) -> str:
    """The store index of a verify token: its digest, so the token itself is never a key."""
    return hashlib.sha256(b"wa-verify:" + utf8(token)).hexdigest()


def safe_challenge(challenge: str | None) -> str | None:
    """The challenge if it is safe to echo (bounded, URL-safe characters only), else None."""
    if challenge is None or not 0 < len(challenge) <= MAX_CHALLENGE or not _CHALLENGE.fullmatch(challenge):
        return None
    return challenge


# -- payloads -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InboundMessage:
    phone_number_id: str
    message_id: str
    contact: str  # the sender's WhatsApp id (their phone number, digits only)
    contact_name: str
    type: str
    text: str  # the body for text messages, a readable description for everything else
    timestamp: int
    data: Mapping[str, Any] = field(default_factory=dict)  # the type-specific object, as sent

    kind = "message"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    phone_number_id: str
    message_id: str
    status: str  # sent | delivered | read | failed | ...
    recipient_id: str
    timestamp: int
    errors: Sequence[Mapping[str, Any]] = ()

    kind = "status"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self), "errors": list(self.errors)}


WebhookEvent = InboundMessage | StatusUpdate


def event_from_dict(data: Mapping[str, Any]) -> WebhookEvent:
    """Inverse of ``to_dict`` (events travel through the store queue and the bus as JSON)."""
    fields = {k: v for k, v in data.items() if k != "kind"}
    if data.get("kind") == "status":
        return StatusUpdate(**{**fields, "errors": tuple(fields.get("errors", ()))})
    return InboundMessage(**fields)


def _values(payload: Any) -> Iterable[Mapping[str, Any]]:
    """Every ``entry[].changes[].value`` object that names a phone number id."""
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        return
    for entry in payload["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            value = change.get("value") if isinstance(change, dict) else None
            if isinstance(value, dict) and _phone_number_id(value):
                yield value


def _phone_number_id(value: Mapping[str, Any]) -> str:
    metadata = value.get("metadata")
    pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    return str(pnid) if isinstance(pnid, (str, int)) and str(pnid) else ""


def phone_number_ids(payload: Any) -> list[str]:
    """The numbers a webhook is for, in order, without repeats (routing only)."""
    return list(dict.fromkeys(_phone_number_id(v) for v in _values(payload)))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def describe(message: Mapping[str, Any]) -> str:
    """Readable text for any message type: the body of a text, a description of the rest."""
    kind = _text(message.get("type")) or "unknown"
    body = _dict(message.get(kind))
    if kind == "text":
        return _text(body.get("body"))
    if kind == "interactive":
        reply = _dict(body.get("button_reply") or body.get("list_reply") or body.get("nfm_reply"))
        return _text(reply.get("title")) or _text(reply.get("body")) or "[interactive reply]"
    if kind == "button":
        return _text(body.get("text")) or _text(body.get("payload")) or "[button]"
    if kind in ("image", "video", "audio", "sticker", "document"):
        name = f"{kind}: {body['filename']}" if kind == "document" and body.get("filename") else kind
        caption = _text(body.get("caption"))
        voice = " (voice note)" if kind == "audio" and body.get("voice") else ""
        return f"[{name}{voice}]" + (f" {caption}" if caption else "")
    if kind == "location":
        place = ", ".join(p for p in (_text(body.get("name")), _text(body.get("address"))) if p)
        where = f"{body.get('latitude')}, {body.get('longitude')}"
        return f"[location: {place} ({where})]" if place else f"[location: {where}]"
    if kind == "contacts":
        contacts = message.get("contacts")
        listed = contacts if isinstance(contacts, list) else []
        names = [_text(_dict(_dict(c).get("name")).get("formatted_name")) for c in listed]
        return "[contacts: " + ", ".join(n for n in names if n) + "]"
    if kind == "reaction":
        emoji = _text(body.get("emoji"))
        return f"[reaction {emoji}]" if emoji else "[reaction removed]"
    if kind == "system":
        return _text(body.get("body")) or "[system message]"
    if kind == "order":
        return "[order]"
    return f"[{kind} message]"


def _contact_names(value: Mapping[str, Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    contacts = value.get("contacts")
    for contact in contacts if isinstance(contacts, list) else ():
        if isinstance(contact, dict):
            names[_text(contact.get("wa_id"))] = _text(_dict(contact.get("profile")).get("name"))
    return names


def parse_webhook(payload: Any) -> list[WebhookEvent]:
    """Every message and status update in a webhook, in order; unknown shapes are skipped."""
    events: list[WebhookEvent] = []
    for value in _values(payload):
        pnid = _phone_number_id(value)
        names = _contact_names(value)
        messages = value.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, dict) or not message.get("id") or not message.get("from"):
                continue
            sender = str(message["from"])
            kind = _text(message.get("type")) or "unknown"
            data = message.get(kind)
            events.append(
                InboundMessage(
                    phone_number_id=pnid,
                    message_id=str(message["id"]),
                    contact=sender,
                    contact_name=names.get(sender) or next(iter(names.values()), ""),
                    type=kind,
                    text=describe(message),
                    timestamp=_int(message.get("timestamp")),
                    data=data if isinstance(data, dict) else {},
                )
            )
        statuses = value.get("statuses")
        for status in statuses if isinstance(statuses, list) else ():
            if not isinstance(status, dict) or not status.get("id") or not status.get("status"):
                continue
            errors = status.get("errors")
            events.append(
                StatusUpdate(
                    phone_number_id=pnid,
                    message_id=str(status["id"]),
                    status=str(status["status"]),
                    recipient_id=_text(status.get("recipient_id")),
                    timestamp=_int(status.get("timestamp")),
                    errors=tuple(e for e in errors if isinstance(e, dict))
                    if isinstance(errors, list)
                    else (),
                )
            )
    return events


def sample_payload(
    phone_number_id: str, sender: str, text: str, message_id: str, name: str = "Test User", timestamp: int = 0
) -> dict[str, Any]:
    """A text-message webhook shaped exactly as Meta sends it (CLI ``whatsapp send``, tests)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "0",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": sender, "phone_number_id": phone_number_id},
                            "contacts": [{"profile": {"name": name}, "wa_id": sender}],
                            "messages": [
                                {
                                    "from": sender,
                                    "id": message_id,
                                    "timestamp": str(timestamp),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


# -- replies ------------------------------------------------------------------------------------
def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split a reply into WhatsApp-sized messages, at a newline or space when there is one."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = max(rest.rfind("\n", 0, limit), rest.rfind(" ", 0, limit))
        cut = cut if cut > limit // 2 else limit
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n ") if cut < limit else rest[cut:]
    if rest or not parts:
        parts.append(rest)
    return parts


def text_message(to: str, body: str) -> dict[str, Any]:
    """The Graph API body of a text message (``POST /{phone_number_id}/messages``)."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": False, "body": body},
    }


def retryable(status: int) -> bool:
    """5xx and 429 are worth another attempt; any other 4xx will fail the same way again."""
    return status >= 500 or status == 429


def session_end_reason(now: float, last_contact_at: float, last_activity: float, idle: float) -> str | None:
    """Why a conversation is over at ``now``, or None while it is live."""
    if now - last_contact_at >= WINDOW_SECONDS:
        return "window_closed"
    if now - last_activity >= idle:
        return "idle_timeout"
    return None


def store_id(text: str) -> str:
    """Store keys from ids Meta sends: as they are when short, a digest when long."""
    return text if len(text) <= 128 else hashlib.sha256(utf8(text)).hexdigest()


def seen_key(ev: WebhookEvent) -> str:
    """The dedupe key of a delivery (Meta redelivers; statuses repeat per status)."""
    kind = "m" if isinstance(ev, InboundMessage) else f"s:{store_id(ev.status)}"
    return f"wa:seen:{kind}:{store_id(ev.phone_number_id)}:{store_id(ev.message_id)}"
