"""Every refusal the server can give, in one tree, mapped to the wire in one place.

Each leaf carries the HTTP status, the WebSocket close code and the stable ``code`` string
that clients read (CONTRACT.md: errors are ``{"detail", "code"}`` on HTTP, a close frame with
the code as reason on WebSockets)::

    VoiceError
    ├── BadRequest                 400 bad_request
    │   └── InvalidRequest         400 invalid_request (the inspection API, /_voice/)
    ├── PayloadTooLarge            413 payload_too_large
    ├── CredentialError
    │   ├── InvalidApiKey          401 invalid_api_key
    │   ├── NoCredential           403 no_credential
    │   └── AgentNotPublic         403 agent_not_public
    ├── OriginNotAllowed           403 origin_not_allowed
    ├── AgentNotOnline             404 agent_not_online
    ├── RateLimited                429 rate_limited (+ Retry-After)
    ├── TokenError
    │   ├── TokenInvalid           401 token_invalid
    │   ├── TokenExpired           401 token_expired
    │   ├── TokenSpent             409 token_spent
    │   ├── TokenWrongChannel      403 token_wrong_channel
    │   └── TokenWrongAgent        403 token_wrong_agent
    ├── ScopeForbidden             403 scope_forbidden
    ├── CallNotFound               404 call_not_found
    ├── AdminError
    │   ├── AdminKeyRequired       401 admin_key_required
    │   └── InvalidAdminKey        403 invalid_admin_key
    ├── SessionNotFound            404 session_not_found
    ├── FaultNotFound              404 fault_not_found
    ├── InjectedFault              (the status and code a fault gives; default 503 fault_injected)
    ├── SlowConsumer               (WebSocket close only: 1013 slow_consumer)
    ├── NotSupported               501 not_supported
    ├── CapacityExceeded           503 at_capacity
    ├── StoreUnavailable           503 store_unavailable
    ├── SignatureError             403 signature_invalid
    │   └── SignatureRequired      403 signature_required
    ├── VerifyTokenInvalid         403 verify_token_invalid
    └── RegistrationError          (SDK frames only: REGISTRATION_ERROR)
        ├── InvalidOriginPattern
        └── AgentInUse             (AGENT_IN_USE)

Only :mod:`server.web.app` and the WebSocket endpoints turn these into bytes.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VoiceError(Exception):
    """Root of every error the server reports to a client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    # 1008 = policy violation (RFC 6455 §7.4.1); 1011 = server error; 1013 = try again later.
    ws_close_code: ClassVar[int] = 1011
    # The code used in `{"event": "error"}` frames on /client (CONTRACT §6.5 uses UPPER_SNAKE).
    frame_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}

    def to_body(self) -> dict[str, str]:
        """The HTTP error body (CONTRACT §1)."""
        return {"detail": self.detail, "code": self.code}

    def frame_fields(self) -> dict[str, Any]:
        """Fields an ``error`` frame carries besides ``error`` and ``code``."""
        return {}


class BadRequest(VoiceError):
    status, code, ws_close_code, frame_code = 400, "bad_request", 1008, "BAD_REQUEST"


class InvalidRequest(BadRequest):
    """Bad input to the inspection API (``/_voice/``): a query value, a body, a fault spec."""

    code, frame_code = "invalid_request", "INVALID_REQUEST"


class PayloadTooLarge(VoiceError):
    status, code, ws_close_code, frame_code = 413, "payload_too_large", 1009, "PAYLOAD_TOO_LARGE"


class CredentialError(VoiceError):
    ws_close_code = 1008


class InvalidApiKey(CredentialError):
    status, code, frame_code = 401, "invalid_api_key", "INVALID_API_KEY"


class NoCredential(CredentialError):
    status, code, frame_code = 403, "no_credential", "NO_CREDENTIAL"


class AgentNotPublic(CredentialError):
    """A key-less (browser) mint for an agent that is online but registered without
    ``allowed_origins``: only a backend with a secret API key mints for it (CONTRACT §1)."""

    status, code, frame_code = 403, "agent_not_public", "AGENT_NOT_PUBLIC"

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"Agent '{agent_id}' only accepts tokens minted by a backend with a secret API key "
            "(it was registered without allowed_origins)"
        )
        self.agent_id = agent_id


class OriginNotAllowed(VoiceError):
    status, code, ws_close_code, frame_code = 403, "origin_not_allowed", 1008, "ORIGIN_NOT_ALLOWED"


class AgentNotOnline(VoiceError):
    status, code, ws_close_code, frame_code = 404, "agent_not_online", 1008, "AGENT_NOT_ONLINE"

    def __init__(self, agent_id: str) -> None:
        # The exact sentence is part of the contract (CONTRACT §1: the SDK docs quote it).
        super().__init__(f"Agent '{agent_id}' is not online")
        self.agent_id = agent_id


class RateLimited(VoiceError):
    status, code, ws_close_code, frame_code = 429, "rate_limited", 1013, "RATE_LIMITED"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TokenError(VoiceError):
    ws_close_code = 1008


class TokenInvalid(TokenError):
    status, code, frame_code = 401, "token_invalid", "TOKEN_INVALID"


class TokenExpired(TokenError):
    status, code, frame_code = 401, "token_expired", "TOKEN_EXPIRED"


class TokenSpent(TokenError):
    status, code, frame_code = 409, "token_spent", "TOKEN_SPENT"


class TokenWrongChannel(TokenError):
    status, code, frame_code = 403, "token_wrong_channel", "TOKEN_WRONG_CHANNEL"


class TokenWrongAgent(TokenError):
    """A stream narrowed (``agent=``) to an agent its token does not name."""

    status, code, frame_code = 403, "token_wrong_agent", "TOKEN_WRONG_AGENT"


class ScopeForbidden(VoiceError):
    """A stream socket sent a command that its token's ``scope`` does not allow."""

    status, code, ws_close_code, frame_code = 403, "scope_forbidden", 1008, "SCOPE_FORBIDDEN"


class CallNotFound(VoiceError):
    """A command names a call that is live nowhere (or that this socket may not see)."""

    status, code, ws_close_code, frame_code = 404, "call_not_found", 1008, "CALL_NOT_FOUND"


class AdminError(VoiceError):
    """The inspection API's own credential: a key from ``VOICE_ADMIN_KEYS``, never an org's."""

    ws_close_code = 1008


class AdminKeyRequired(AdminError):
    status, code, frame_code = 401, "admin_key_required", "ADMIN_KEY_REQUIRED"


class InvalidAdminKey(AdminError):
    status, code, frame_code = 403, "invalid_admin_key", "INVALID_ADMIN_KEY"


class SessionNotFound(VoiceError):
    status, code, ws_close_code, frame_code = 404, "session_not_found", 1008, "SESSION_NOT_FOUND"


class FaultNotFound(VoiceError):
    status, code, ws_close_code, frame_code = 404, "fault_not_found", 1008, "FAULT_NOT_FOUND"


class InjectedFault(VoiceError):
    """A refusal asked for by ``POST /_voice/faults`` (``mint/fail``, ``consume/fail``): the
    status and code of the fault, so a test sees exactly the refusal it set up."""

    status, code, ws_close_code, frame_code = 503, "fault_injected", 1011, "FAULT_INJECTED"

    def __init__(self, detail: str, status: int = 503, code: str = "fault_injected") -> None:
        super().__init__(detail)
        # Per instance: the class values are the default. setattr, as they are ClassVars.
        setattr(self, "status", status)  # noqa: B010
        setattr(self, "code", code)  # noqa: B010
        setattr(self, "ws_close_code", 1011 if status >= 500 else 1008)  # noqa: B010


class SlowConsumer(VoiceError):
    """A stream socket fell further behind than ``VOICE_STREAM_QUEUE`` events: it is closed, and
    the client resumes with ``after=<last seq>``."""

    status, code, ws_close_code, frame_code = 503, "slow_consumer", 1013, "SLOW_CONSUMER"


class NotSupported(VoiceError):
    """A route of the hosted service that needs a real provider (TTS, STT, PSTN, billing):
    answered explicitly instead of a 404, so a client sees why. The body also carries ``error``,
    the field the SDK's audio client reads."""

    status, code, ws_close_code, frame_code = 501, "not_supported", 1008, "NOT_SUPPORTED"

    def to_body(self) -> dict[str, str]:
        return {**super().to_body(), "error": self.detail}


class CapacityExceeded(VoiceError):
    status, code, ws_close_code, frame_code = 503, "at_capacity", 1013, "SERVER_AT_CAPACITY"


class StoreUnavailable(VoiceError):
    status, code, ws_close_code, frame_code = 503, "store_unavailable", 1011, "STORE_UNAVAILABLE"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class SignatureError(VoiceError):
    status, code, ws_close_code, frame_code = 403, "signature_invalid", 1008, "SIGNATURE_INVALID"


class SignatureRequired(SignatureError):
    """No secret applies to this webhook and ``VOICE_WHATSAPP_REQUIRE_SIGNATURE`` is on."""

    code = "signature_required"


class VerifyTokenInvalid(VoiceError):
    """Meta's subscription check named a verify token nobody registered."""

    status, code, ws_close_code, frame_code = 403, "verify_token_invalid", 1008, "VERIFY_TOKEN_INVALID"


class RegistrationError(VoiceError):
    status, code, ws_close_code, frame_code = 400, "registration_error", 1008, "REGISTRATION_ERROR"


class InvalidOriginPattern(RegistrationError):
    """An ``allowed_origins`` entry that cannot be parsed (refused at registration)."""


class AgentInUse(RegistrationError):
    status, code, frame_code = 409, "agent_in_use", "AGENT_IN_USE"

    def __init__(
        self, detail: str, holder_alive: bool | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(detail)
        self.holder_alive = holder_alive
        self.retry_after_s = retry_after_s

    def frame_fields(self) -> dict[str, Any]:
        # The SDK's conflict retry reads both (pinecall/sdk src/kernel/backoff.ts): a live
        # holder slows its retries, a dead one restarts its retry budget.
        fields: dict[str, Any] = {}
        if self.holder_alive is not None:
            fields["holder_alive"] = self.holder_alive
        if self.retry_after_s is not None:
            fields["retry_after_s"] = self.retry_after_s
        return fields
