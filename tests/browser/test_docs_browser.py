"""``/docs`` in real headless Chromium (the Debian package): the page renders every operation of
``/openapi.json`` (the inspection routes included) with its own script and style, and the filter
narrows them; no request leaves the server and no console error (a CSP violation would be one)."""

from __future__ import annotations

import shutil

import pytest
from playwright.async_api import async_playwright

from server.web import openapi
from server.web.app import operations
from tests.support.procs import start_server

pytestmark = pytest.mark.browser


async def test_docs_page_renders_every_operation() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: scripts/test installs it (apt-get install chromium)")
    server = start_server(
        {
            "VOICE_TOKEN_SECRET": "docs-secret-0123456789abcdef0123456",
            "VOICE_INSPECT": "1",  # the /_voice/* operations too, as docs/openapi.json has them
            "VOICE_ADMIN_KEYS": "admin-docs-0123456789abcdef0123456789",
        }
    )
    expected = sum(len(item) for item in openapi.document(operations())["paths"].values())
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium, headless=True, args=["--no-sandbox"]
            )
            page = await browser.new_page()
            console: list[str] = []
            requested: list[str] = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: requested.append(r.url))
            await page.goto(server.url + "/docs")
            await page.wait_for_selector("body[data-rendered]", timeout=15_000)
            rendered = int(await page.get_attribute("body", "data-rendered") or 0)
            await page.fill("#filter", "/whatsapp/webhook")
            visible = await page.locator("details.op:visible").count()
            await page.fill("#filter", "/_voice/faults")
            faults = await page.locator("details.op:visible").count()
            title = await page.text_content("#title")
            await browser.close()
    finally:
        server.stop()
    assert rendered == expected
    assert visible == 2  # GET and POST
    assert faults == 4  # GET, POST and DELETE /_voice/faults, DELETE /_voice/faults/{fault_id}
    assert title is not None and title.startswith("voice-server ")
    assert console == []
    assert all(url.startswith(server.url) for url in requested), requested
