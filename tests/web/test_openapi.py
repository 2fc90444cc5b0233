"""``/openapi.json`` (server/web/openapi.py): valid OpenAPI 3.1, one operation per HTTP route and
method, error codes from the server/errors.py tree, and the committed docs/openapi.json equal to
what a real server process serves (the drift test: run ``scripts/openapi`` after changing routes)."""

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


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {"VOICE_TOKEN_SECRET": "openapi-secret-0123456789abcdef0123", "VOICE_API_KEYS": f"acme:{KEY}"}
    )
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


def _http_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(token_secrets=("x" * 32,)))
    found = set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":  # Starlette adds HEAD to every GET route
                    found.add((method.lower(), route.path))
    return found


def test_every_http_route_and_method_has_exactly_one_operation() -> None:
    documented = [(op.method, op.path) for op in operations()]
    assert len(documented) == len(set(documented))
    assert set(documented) == _http_routes()


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


def test_the_document_does_not_depend_on_settings() -> None:
    """Every node, dev or not, serves the same bytes as docs/openapi.json."""
    assert openapi.encode(openapi.document(operations())) == COMMITTED.read_bytes()


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
