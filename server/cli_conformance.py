"""``voice-server conformance URL [--api-key sk_...] [--vectors DIR]``: run the HTTP-visible
published vectors (tests/vectors/*.json) against any deployment and print one line per check.

Without a key it checks what anyone can see: the error shapes and codes of the mints, forged and
tampered tokens on ``POST /webrtc/offer`` (401 ``token_invalid`` whatever the deployment's
secret), malformed ``X-Hub-Signature-256`` headers on the webhook, ``/healthz`` and
``/openapi.json``. With a secret API key it also registers short-lived agents over ``/client``
(one per ``allowed_origins`` pattern), checks each origin verdict through a public mint,
the invalid patterns and the ``/client`` frame vectors, then disconnects (the agents go offline).
Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors"
# A syntactically complete browser audio offer: the offer route checks the SDP before the token.
SDP = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
        "",
    ]
)


def add_commands(commands: Any) -> None:
    run = commands.add_parser("conformance", help="run the published test vectors against a deployment")
    run.add_argument("url", help="the deployment's base URL, e.g. https://voice.example.com")
    run.add_argument("--api-key", help="a secret API key: also check origin verdicts and /client frames")
    run.add_argument(
        "--vectors", type=Path, default=DEFAULT_VECTORS, help="the vectors folder (tests/vectors)"
    )
    run.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")
    run.set_defaults(run=_conformance)


class Report:
    def __init__(self) -> None:
        self.passed = self.failed = 0

    def check(self, name: str, ok: bool, got: object = None) -> None:
        if ok:
            self.passed += 1
            print(f"PASS {name}")
        else:
            self.failed += 1
            print(f"FAIL {name}: got {got!r}"[:600])


def _body(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:200]


def _is_error(response: Any, status: int, *codes: str) -> bool:
    body = _body(response)
    return (
        response.status_code == status
        and isinstance(body, dict)
        and isinstance(body.get("detail"), str)
        and body.get("code") in codes
    )


def _conformance(args: argparse.Namespace) -> int:
    import httpx

    vectors: Callable[[str], Any] = lambda name: json.loads((args.vectors / name).read_text())  # noqa: E731
    base = args.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        print("voice-server: the URL must start with http:// or https://", file=sys.stderr)
        return 2
    report = Report()
    with httpx.Client(base_url=base, timeout=args.timeout) as http:
        _public(http, report, vectors)
        if args.api_key:
            _keyed(http, base, args.api_key, report, vectors, args.timeout)
    print(f"{report.passed} passed, {report.failed} failed")
    return 0 if report.failed == 0 else 1


def _public(http: Any, report: Report, vectors: Callable[[str], Any]) -> None:
    health = http.get("/healthz")
    report.check("GET /healthz answers 200", health.status_code == 200, health.status_code)
    spec = http.get("/openapi.json")
    report.check(
        "GET /openapi.json is OpenAPI 3.1",
        _body(spec).get("openapi") == "3.1.0" if spec.status_code == 200 else False,
        spec.status_code,
    )
    missing = http.get("/webrtc/token")
    report.check(
        "mint without agent_id: 400 bad_request", _is_error(missing, 400, "bad_request"), _body(missing)
    )
    ghost = "conformance-" + secrets.token_hex(6)
    offline = http.get(
        "/webrtc/token", params={"agent_id": ghost}, headers={"Origin": "https://conformance.example"}
    )
    report.check(
        "public mint for an unknown agent: 404 agent_not_online, the contract's sentence",
        _is_error(offline, 404, "agent_not_online")
        and _body(offline)["detail"] == f"Agent '{ghost}' is not online",
        _body(offline),
    )
    anonymous = http.get("/webrtc/token", params={"agent_id": ghost})
    report.check(
        "mint with no key and no Origin: 403 no_credential",
        _is_error(anonymous, 403, "no_credential"),
        _body(anonymous),
    )
    for header in ("Bearer", "Basic abc", "Bearer a b"):
        bad = http.get("/webrtc/token", params={"agent_id": ghost}, headers={"Authorization": header})
        report.check(
            f"mint with 'Authorization: {header}': 401 invalid_api_key",
            _is_error(bad, 401, "invalid_api_key"),
            _body(bad),
        )
    wrong = http.get(
        "/webrtc/token",
        params={"agent_id": ghost},
        headers={"Authorization": "Bearer sk_conformance_not_a_key"},
    )
    report.check(
        "mint with an unknown secret key: 401 invalid_api_key",
        _is_error(wrong, 401, "invalid_api_key"),
        _body(wrong),
    )

    tokens = vectors("tokens.json")
    by_name = {case["name"]: case for case in tokens["cases"]}
    for case in tokens["http"]:
        token = by_name[case["name"]]["token"]
        offer = http.post("/webrtc/offer", json={"type": "offer", "sdp": SDP, "token": token})
        report.check(
            f"offer with token '{case['name']}': {case['status']} {case['code']}",
            _is_error(offer, case["status"], case["code"]),
            _body(offer),
        )

    signatures = vectors("whatsapp_signatures.json")
    body = base64.b64decode(signatures["body_base64"])
    for case in signatures["cases"]:
        if case["valid"] or case["reason"] == "no match":
            continue  # only the deployment's own app secret signs validly
        headers = {"Content-Type": "application/json"}
        if case["header"] is not None:
            headers["X-Hub-Signature-256"] = case["header"]
        hook = http.post("/whatsapp/webhook", content=body, headers=headers)
        if hook.status_code == 200:
            print(f"SKIP webhook with signature '{case['name']}': this deployment accepts unsigned webhooks")
            continue
        report.check(
            f"webhook with signature '{case['name']}': 403",
            _is_error(hook, 403, "signature_invalid", "signature_required"),
            _body(hook),
        )


def _keyed(
    http: Any, base: str, key: str, report: Report, vectors: Callable[[str], Any], timeout: float
) -> None:
    from websockets.sync.client import connect

    origins = vectors("origins.json")
    run = secrets.token_hex(4)
    url = base.replace("http", "ws", 1) + "/client"
    with connect(url, open_timeout=timeout) as ws:

        def send(frame: str) -> dict[str, Any]:
            ws.send(frame)
            while True:
                answer: dict[str, Any] = json.loads(ws.recv(timeout))
                if answer.get("event") in ("error", "agent.created", "connected"):
                    return answer

        hello = send(json.dumps({"event": "connect", "api_key": key}))
        report.check("/client connect with the key", hello.get("event") == "connected", hello)
        if hello.get("event") != "connected":
            return
        agents: dict[str, str] = {}
        for pattern in dict.fromkeys(v["pattern"] for v in origins["verdicts"]):
            agent = f"conformance-{run}-{len(agents)}"
            created = send(
                json.dumps({"event": "agent.create", "agent_id": agent, "allowed_origins": [pattern]})
            )
            report.check(f"register an agent for {pattern}", created.get("event") == "agent.created", created)
            agents[pattern] = agent
        for verdict in origins["verdicts"]:
            params = {"agent_id": agents[verdict["pattern"]]}
            minted = http.get("/webrtc/token", params=params, headers={"Origin": verdict["origin"]})
            expected = "allowed" if verdict["allowed"] else "refused"
            name = f"{verdict['origin']} against {verdict['pattern']}: {expected}"
            if verdict["allowed"]:
                ok = minted.status_code == 200 and "access-control-allow-origin" in minted.headers
            else:
                ok = (
                    _is_error(minted, 403, "origin_not_allowed")
                    and "access-control-allow-origin" not in minted.headers
                )
            report.check(name, ok, (minted.status_code, _body(minted)))
        for raw in origins["invalid_patterns"]:
            agent = f"conformance-{run}-bad"
            refused = send(json.dumps({"event": "agent.create", "agent_id": agent, "allowed_origins": [raw]}))
            report.check(
                f"pattern {raw!r} refused at registration",
                refused.get("code") == "REGISTRATION_ERROR",
                refused,
            )
        for case in vectors("client_frames.json")["frames"]:
            answer = send(case["frame"])
            report.check(
                f"/client frame {case['frame'][:60]!r}: {case['code']}",
                answer.get("code") == case["code"],
                answer,
            )
