"""A thin client for the inspection API under ``/_voice/`` (issue 10 item 1, the shapes of
INSPECT-SPEC): one method per route, JSON in and out, and the assertions tests make most.

Errors keep the server's ``{"detail", "code"}``: :class:`InspectorError` carries both and the
status. A server with inspection off answers every ``/_voice/*`` path 404 ``not_found``, which
is raised as :class:`InspectionUnavailable` with a hint on how to turn it on.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from typing import Any, NoReturn, Protocol

import httpx

PREFIXES = ("wrtc_", "cht_", "stm_")


class InspectorError(Exception):
    """The inspection API refused a request: ``status``, ``code`` and ``detail`` as it answered."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class InspectionUnavailable(InspectorError):
    """The server answers ``/_voice/*`` as unknown routes: inspection is off there."""


class Session(Protocol):
    """Anything that names a session: a chat or a browser call of this kit."""

    @property
    def session_id(self) -> str: ...

    @property
    def call_id(self) -> str | None: ...


def token_jti(token: str) -> str:
    """The token id inside ``token``, read without checking the signature (a test holds tokens
    its own server minted; the inspection API never shows the token itself, only its ``jti``)."""
    body = next((token[len(p) :] for p in PREFIXES if token.startswith(p)), None)
    if body is None or "." not in body:
        raise ValueError(f"not a voice-server token: {token[:12]!r}...")
    payload = body.split(".", 1)[0]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError("the token's payload is not base64url JSON") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("j"), str):
        raise ValueError("the token's payload has no token id")
    return str(claims["j"])


class Inspector:
    """``/_voice/*`` of one server. ``admin_key`` is sent as ``Authorization: Bearer`` (needed
    outside dev mode, and whenever the server sets VOICE_ADMIN_KEYS)."""

    def __init__(self, url: str, admin_key: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self._http = httpx.Client(base_url=self.url + "/_voice", headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; the decoded JSON body, or the server's refusal raised."""
        if "params" in kwargs:
            kwargs["params"] = {k: v for k, v in kwargs["params"].items() if v is not None}
        response = self._http.request(method, path, **kwargs)
        if response.is_success:
            return response.json()
        self._raise(response)

    def _raise(self, response: httpx.Response) -> NoReturn:
        try:
            body = response.json()
        except ValueError:
            body = None
        code = body.get("code", "") if isinstance(body, dict) else ""
        detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
        if response.status_code == 404 and code in ("not_found", ""):
            raise InspectionUnavailable(
                404,
                "not_found",
                f"{self.url}{response.request.url.path} answers as an unknown route: inspection is off "
                "(start the server with --dev, or VOICE_INSPECT=1 and VOICE_ADMIN_KEYS)",
            )
        raise InspectorError(response.status_code, code, str(detail))

    def _items(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every item of a paged list (``after=``/``next_after``), oldest first."""
        return list(self._pages(path, params))

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = dict(params)
        while True:
            page = self.request("GET", path, params=params)
            yield from page["items"]
            if page.get("next_after") is None or not page["items"]:
                return
            params["after"] = page["next_after"]

    # -- routes ------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/health")
        return result

    def available(self) -> bool:
        """Whether the server answers the inspection API at all (False when it is off)."""
        try:
            self.health()
        except InspectionUnavailable:
            return False
        return True

    def tokens(
        self,
        agent_id: str | None = None,
        channel: str | None = None,
        state: str | None = None,
        after: int | None = None,
    ) -> list[dict[str, Any]]:
        params = {"agent_id": agent_id, "channel": channel, "state": state, "after": after, "limit": 1000}
        return self._items("/tokens", params)

    def token(self, token_or_jti: str) -> dict[str, Any]:
        """The ledger row of one token (given as the token string or its ``jti``)."""
        jti = token_jti(token_or_jti) if token_or_jti.startswith(PREFIXES) else token_or_jti
        for row in self.tokens():
            if row["jti"] == jti:
                return row
        raise AssertionError(f"no token {jti} in the ledger")

    def journal(
        self, kind: str | None = None, agent_id: str | None = None, after: int | None = None
    ) -> list[dict[str, Any]]:
        return self._items("/journal", {"kind": kind, "agent_id": agent_id, "after": after, "limit": 1000})

    def stream_journal(
        self, after: int | None = None, kind: str | None = None, agent_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """``GET /_voice/journal/stream``: entries as the server journals them (those after
        ``after`` first), until the server closes the stream; filtered as the list is."""
        wanted = {"after": after, "kind": kind, "agent_id": agent_id}
        params = {k: v for k, v in wanted.items() if v is not None}
        timeout = httpx.Timeout(10.0, read=None)
        with self._http.stream("GET", "/journal/stream", params=params, timeout=timeout) as response:
            if not response.is_success:
                response.read()
                self._raise(response)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                yield json.loads(line[5:])

    def sessions(self, agent_id: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return self._items("/sessions", {"agent_id": agent_id, "state": state, "limit": 1000})

    def session(self, call_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/sessions/{call_id}")
        return result

    def reset(self, agents: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/reset", json={"agents": agents})
        return result

    def add_fault(self, target: str, kind: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", "/faults", json={"target": target, "kind": kind, **params}
        )
        return result

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/faults")["items"]
        return result

    def clear_faults(self, fault_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/faults/{fault_id}" if fault_id else "/faults")
        return result

    def clock(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/clock")
        return result

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/clock", json={"advance_seconds": seconds})
        return result

    def reset_clock(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/clock", json={"reset": True})
        return result

    # -- assertions --------------------------------------------------------------------------------
    def assert_consumed_once(self, token: str, by: Session | str) -> dict[str, Any]:
        """``token`` was consumed, exactly once, by ``by`` (a chat or call of this kit, or its
        session or call id): its ledger row says consumed by it, and the journal holds one
        ``consume.allowed`` for it and no other. Returns the ledger row."""
        ids = {by} if isinstance(by, str) else {by.session_id, by.call_id} - {None}
        jti = token_jti(token)
        row = self.token(jti)
        assert row["state"] == "consumed", f"token {jti} is {row['state']}, not consumed"
        assert row["consumed_by"] in ids, f"token {jti} was consumed by {row['consumed_by']}, not {ids}"
        allowed = [e for e in self.journal(kind="consume.allowed") if e.get("jti") == jti]
        assert len(allowed) == 1, f"token {jti} was consumed {len(allowed)} times: {allowed}"
        assert allowed[0].get("session_id") in ids, f"the journal says {allowed[0]}, not {ids}"
        return row

    def assert_refused(self, kind: str, code: str) -> dict[str, Any]:
        """The journal holds a ``kind`` entry (``mint.refused``, ``consume.refused``,
        ``client.refuse``) with ``code``; returns the newest such entry."""
        entries = [e for e in self.journal(kind=kind) if e.get("code") == code]
        assert entries, f"no {kind} with code {code} in the journal"
        return entries[-1]
