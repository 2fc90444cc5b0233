"""Drive the inspector page (/_voice/ui) in real headless Chromium against a real server process.

Run like ``driver.py`` (re-executed by ``test_inspector_browser.py`` inside a loopback-only
network namespace). The server is booted by the test kit (production mode, an admin key,
inspection on); the page is loaded with no key, then given it in its field; the test kit mints
and holds a chat and a refused mint happens; the page must show the token consumed by that
chat, the session and its timeline, and the journal live. Prints one ``RESULT <json>`` line and
saves a screenshot to the path given as the first argument.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from server.testkit import VoiceServer  # noqa: E402
from tests.browser.driver import CHROMIUM_FLAGS, STEP_SECONDS  # noqa: E402


async def shows(page: Page, selector: str, *texts: str) -> str:
    """The text of ``selector`` once it contains every one of ``texts``."""
    await page.wait_for_function(
        "([selector, texts]) => { const n = document.querySelector(selector);"
        " return n && texts.every(t => n.textContent.includes(t)); }",
        arg=[selector, list(texts)],
        timeout=STEP_SECONDS,
    )
    return await page.inner_text(selector)


def use_the_server(server: VoiceServer) -> dict[str, str]:
    """What an app does, through the test kit: a chat with an agent, and a refused mint."""
    fault = server.inspector.add_fault("consume", "fail", channel="stream", status=503, code="ui_fault")
    agent = server.agent("ui-agent")
    chat = agent.chat()
    assert chat.send("hello inspector") == "You said: hello inspector"
    refused = server.mint("nobody-here")
    assert refused.status_code == 404, refused.text
    jti = server.inspector.token(chat.token)["jti"]
    return {"jti": jti, "call_id": chat.call_id, "session_id": chat.session_id, "fault_id": fault["id"]}


async def drive(server: VoiceServer, screenshot: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"url": server.url}
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not on PATH"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            # The page's CSP forbids eval; Playwright's wait_for_function needs it for its own probes.
            page = await browser.new_page(bypass_csp=True, viewport={"width": 1400, "height": 1000})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            refused: list[str] = []
            page.on("response", lambda r: r.ok or refused.append(f"{r.status} {r.url.split('?')[0]}"))
            await page.goto(server.url + "/_voice/ui")
            result["without_key"] = await shows(page, "#status", "admin_key_required")

            await page.fill("#admin-key", str(server.admin_key))
            await page.click("#use-key")
            await page.wait_for_function("inspector.live === true", timeout=STEP_SECONDS)
            result["health"] = await page.inner_text("#health")

            used = await asyncio.to_thread(use_the_server, server)
            result.update(used)
            tokens = await shows(page, "#tokens tbody", used["jti"], "consumed", used["call_id"])
            result["token_row"] = next(line for line in tokens.splitlines() if used["jti"] in line)
            sessions = await shows(page, "#sessions tbody", used["call_id"], "ui-agent")
            result["session_row"] = next(line for line in sessions.splitlines() if used["call_id"] in line)
            journal = await shows(page, "#journal tbody", "consume.allowed", "mint.refused", "nobody-here")
            result["journal_kinds"] = sorted(
                {line.split("\t")[2] for line in journal.splitlines() if "\t" in line}
            )

            await page.click(f'#sessions tbody tr[data-call-id="{used["call_id"]}"]')
            timeline = await shows(page, "#timeline tbody", "chat.message", "bot.reply", "chat.done")
            result["timeline"] = [line.split("\t")[1:3] for line in timeline.splitlines()]
            faults = await shows(page, "#faults tbody", used["fault_id"], "ui_fault")
            result["fault_row"] = faults.split("\t")[:3]
            await page.screenshot(path=str(screenshot), full_page=True)
            result["errors_after_key"] = await page.evaluate("inspector.errors.slice(1)")
            # Refused loads are checked one by one in ``refused``; any other console line counts.
            result["console"] = [c for c in console if "Failed to load resource" not in c]
            result["refused"] = sorted(set(refused))

            result["foreign_requests"] = [u for u in requests if not u.startswith(server.url)]
        finally:
            await browser.close()
    return result


def main() -> int:
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        print(
            f"refusing to run outside a loopback-only namespace (interfaces: {interfaces})", file=sys.stderr
        )
        return 2
    screenshot = Path(sys.argv[1])
    server = VoiceServer.boot()
    try:
        result = asyncio.run(asyncio.wait_for(drive(server, screenshot), 120))
    except BaseException as exc:
        print(f"driver failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("---- server log ----\n" + server.log()[-6000:], file=sys.stderr)
        return 1
    finally:
        server.close()
    result["interfaces"] = interfaces
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
