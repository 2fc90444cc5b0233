"""``/openapi.json`` (server/web/openapi.py): valid OpenAPI 3.1, one operation per HTTP route and
method with inspection on and off, error codes from the server/errors.py tree, and the committed
docs/openapi.json equal to what a real server process with inspection on serves (the drift test:
run ``scripts/openapi`` after changing routes); with inspection off the served document is the same
without the ``/_voice/*`` operations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

from server import errors
from server.settings import Settings
from server.web import openapi
from server.web.app import create_app, operations
from tests.support.procs import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
KEY = "sk_test_openapi_0123456789abcdef"
ADMIN_KEY = "admin-openapi-0123456789abcdef0123456789"
ENV = {"VOICE_TOKEN_SECRET": "openapi-secret-0123456789abcdef0123", "VOICE_API_KEYS": f"acme:{KEY}"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """Not dev mode, inspection asked for: what docs/openapi.json documents."""
    proc = start_server({**ENV, "VOICE_INSPECT": "1", "VOICE_ADMIN_KEYS": ADMIN_KEY})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def server_without_inspection() -> Iterator[ServerProcess]:
    proc = start_server(ENV)  # not dev mode: VOICE_INSPECT defaults to off
    yield proc
    proc.stop()


def served(server: ServerProcess) -> httpx.Response:
    response = httpx.get(server.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return response


def test_committed_document_is_what_the_server_serves(server: ServerProcess) -> None:
    """docs/openapi.json byte for byte; when this fails, run scripts/openapi and commit the file."""
    assert served(server).content == COMMITTED.read_bytes(), "docs/openapi.json drifted: run scripts/openapi"


def test_served_document_validates_as_openapi_3_1(server: ServerProcess) -> None:
    document = served(server).json()
    assert document["openapi"] == "3.1.0"
    errors_found = [str(e) for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors_found == []


def test_without_inspection_the_document_leaves_out_exactly_the_voice_routes(
    server: ServerProcess, server_without_inspection: ServerProcess
) -> None:
    full, without = served(server).json(), served(server_without_inspection).json()
    assert httpx.get(server_without_inspection.url + "/_voice/health", timeout=10).status_code == 404
    assert httpx.get(server.url + "/_voice/health", timeout=10).status_code == 401  # mounted, guarded
    voice = {p for p in full["paths"] if p.startswith("/_voice/")}
    assert "/_voice/health" in voice and "/_voice/ui/{name}" in voice
    assert {p: i for p, i in full["paths"].items() if p not in voice} == without["paths"]
    assert "inspection" in [t["name"] for t in full["tags"]]
    assert "inspection" not in [t["name"] for t in without["tags"]]
    assert not [str(e) for e in OpenAPIV31SpecValidator(without).iter_errors()]


def _http_routes(inspect: bool) -> set[tuple[str, str]]:
    app = create_app(Settings(token_secrets=("x" * 32,), inspect=inspect, admin_keys=(ADMIN_KEY,)))
    found = set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":  # Starlette adds HEAD to every GET route
                    found.add((method.lower(), route.path))
    return found


@pytest.mark.parametrize("inspect", [True, False], ids=["inspect-on", "inspect-off"])
def test_every_http_route_and_method_has_exactly_one_operation(inspect: bool) -> None:
    documented = [(op.method, op.path) for op in operations(inspect)]
    assert len(documented) == len(set(documented))
    assert set(documented) == _http_routes(inspect)


def test_error_responses_carry_the_codes_of_the_error_tree() -> None:
    """Every documented error status lists exactly the codes of the classes the operation names."""
    document = openapi.document(operations())
    mint = document["paths"]["/webrtc/token"]["get"]["responses"]
    codes = {
        status: r["content"]["application/json"]["schema"]["properties"]["code"]["enum"]
        for status, r in mint.items()
        if status != "200"
    }
    assert codes == {
        "400": ["bad_request"],
        "401": ["invalid_api_key"],
        "403": sorted(["no_credential", "agent_not_public", "origin_not_allowed"]),
        "404": ["agent_not_online"],
        "429": ["rate_limited"],
        "503": ["store_unavailable"],
    }
    assert "Retry-After" in mint["429"]["headers"] and "Retry-After" in mint["503"]["headers"]
    leaves: set[str] = set()
    stack: list[type[errors.VoiceError]] = [errors.VoiceError]
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        leaves.add(cls.code)
    for path, item in document["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and (path, status) != ("/readyz", "503"):
                    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
                    unknown = set(schema["properties"]["code"]["enum"]) - leaves - {"not_found"}
                    assert not unknown, f"{method} {path} {status}: {unknown}"


def test_inspection_operations_carry_the_admin_key_and_their_errors() -> None:
    document = openapi.document(operations())
    assert document["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"

    def codes(path: str, method: str) -> dict[str, list[str]]:
        responses = document["paths"][path][method]["responses"]
        return {
            s: r["content"]["application/json"]["schema"]["properties"]["code"]["enum"]
            for s, r in responses.items()
            if s.startswith("4") or s.startswith("5")
        }

    for path, item in document["paths"].items():
        for method, op in item.items():
            assert (op["tags"] == ["inspection"]) == path.startswith("/_voice/"), (method, path)
            if path.startswith("/_voice/") and not path.startswith("/_voice/ui"):
                assert op["security"] == [{"adminKey": []}, {}]
                assert "VOICE_INSPECT" in op["description"]
                found = codes(path, method)
                assert found["401"] == ["admin_key_required"] and found["403"] == ["invalid_admin_key"]
                assert "invalid_request" in found["400"] and "not_found" in found["404"]
    assert codes("/_voice/sessions/{call_id}", "get")["404"] == ["not_found", "session_not_found"]
    assert codes("/_voice/faults/{fault_id}", "delete")["404"] == ["fault_not_found", "not_found"]
    stream = document["paths"]["/_voice/journal/stream"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    assert "201" in document["paths"]["/_voice/faults"]["post"]["responses"]
    assert document["paths"]["/_voice/faults"]["post"]["requestBody"]["required"] is True
    tokens = document["paths"]["/_voice/tokens"]["get"]["parameters"]
    assert [p["name"] for p in tokens] == ["agent_id", "channel", "state", "after", "limit"]


def test_the_document_depends_only_on_whether_inspection_is_on() -> None:
    """Every node with inspection on, dev or not, serves the bytes of docs/openapi.json."""
    assert openapi.encode(openapi.document(operations())) == COMMITTED.read_bytes()
    assert openapi.encode(openapi.document(operations(inspect_on=False))) != COMMITTED.read_bytes()


def test_docs_page_and_assets_are_served_from_the_package(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'src="/docs/docs.js"' in page.text and "http" not in page.text.replace('href="/openapi.json"', "")
    for name, media in (("docs.js", "text/javascript"), ("docs.css", "text/css")):
        asset = httpx.get(f"{server.url}/docs/{name}", timeout=10)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
    script = httpx.get(server.url + "/docs/docs.js", timeout=10).text
    assert 'fetch("/openapi.json")' in script and "https://" not in script
    assert httpx.get(server.url + "/docs/other.js", timeout=10).status_code == 404


def test_an_empty_inspection_query_value_means_not_given_and_the_document_says_so(
    server: ServerProcess,
) -> None:
    """Found by fuzzing the /_voice operations: ``limit=``, ``after=``, ``channel=`` are taken as
    not given (a blank filter field), which the documented integer and enum schemas refused."""
    response = httpx.get(
        server.url + "/_voice/tokens?limit=&after=&channel=&state=&agent_id=",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200 and response.json() == {"items": [], "next_after": None}
    document = served(server).json()
    for parameter in document["paths"]["/_voice/tokens"]["get"]["parameters"]:
        schema = parameter["schema"]
        admits_empty = {"const": ""} in schema.get("anyOf", []) or schema.get("type") == "string"
        assert admits_empty, parameter["name"]
    limit = next(p for p in document["paths"]["/_voice/journal"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 1000}
    bad = httpx.get(
        server.url + "/_voice/tokens?limit=0", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
