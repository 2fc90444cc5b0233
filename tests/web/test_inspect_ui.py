"""``/_voice/ui`` on real server processes: mounted with the inspection API and only with it, its
files from the package with a CSP that keeps every load and fetch on this server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.support.procs import ServerProcess, start_server

KEY = "sk_test_inspect_ui_0123456789abc"
SECRET = "inspect-ui-secret-0123456789abcdef"
ADMIN = "ui-admin-" + "z" * 40


def env(**extra: str) -> dict[str, str]:
    return {"VOICE_TOKEN_SECRET": SECRET, "VOICE_API_KEYS": f"acme:{KEY}", **extra}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ServerProcess]]:
    procs = {
        "off": start_server(env()),
        "on": start_server(env(VOICE_INSPECT="1", VOICE_ADMIN_KEYS=ADMIN)),
    }
    yield procs
    for proc in procs.values():
        proc.stop()


@pytest.mark.parametrize("path", ["/_voice/ui", "/_voice/ui/inspector.js", "/_voice/ui/inspector.css"])
def test_with_inspection_off_the_page_is_an_unknown_route(
    servers: dict[str, ServerProcess], path: str
) -> None:
    off = servers["off"]
    response = httpx.get(off.url + path)
    unknown = httpx.get(off.url + "/no-such-route")
    assert response.status_code == 404 == unknown.status_code
    assert response.json() == {**unknown.json(), "detail": response.json()["detail"]}
    assert response.json()["code"] == "not_found"


def test_with_inspection_on_the_page_and_its_assets_come_from_the_package(
    servers: dict[str, ServerProcess],
) -> None:
    on = servers["on"]
    page = httpx.get(on.url + "/_voice/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"
    assert re.findall(r'(?:src|href)="([^"]+)"', page.text) == [
        "/_voice/ui/inspector.css",
        "/_voice/ui/inspector.js",
    ]
    for name, kind in (("inspector.js", "text/javascript"), ("inspector.css", "text/css")):
        asset = httpx.get(f"{on.url}/_voice/ui/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert not re.search(r"https?://", asset.text), f"{name} names another host"
    assert "innerHTML" not in httpx.get(on.url + "/_voice/ui/inspector.js").text
    assert httpx.get(on.url + "/_voice/ui/demo.js").status_code == 404
    assert httpx.get(on.url + "/_voice/ui/..%2fapp.py").status_code == 404


def test_the_page_holds_no_data_and_its_data_needs_the_admin_key(servers: dict[str, ServerProcess]) -> None:
    on = servers["on"]
    assert httpx.get(on.url + "/_voice/tokens").json()["code"] == "admin_key_required"
    wrong = httpx.get(on.url + "/_voice/journal", headers={"Authorization": "Bearer " + "w" * 40})
    assert wrong.status_code == 403 and wrong.json()["code"] == "invalid_admin_key"
    allowed = httpx.get(on.url + "/_voice/tokens", headers={"Authorization": f"Bearer {ADMIN}"})
    assert allowed.status_code == 200
