"""Drive the /demo page in real headless Chromium against a real server process.

Meant to run inside a loopback-only network namespace (``unshare -n``, ``ip link set lo up``):
the test in ``test_demo_browser.py`` re-executes this file there, so the server, Chromium and
every packet stay on that namespace's loopback. Prints one ``RESULT <json>`` line with what it
observed, and exits non-zero (with the reason on stderr) when a step does not happen in time.

Steps: load the page from ``http://localhost:<port>`` (so the public mint to 127.0.0.1 is
cross-origin and carries Origin), connect WebRTC with the fake microphone, type a message
(``inject_text``), and wait for the mock agent's spoken echo on the data channel (``bot.word``s
then ``bot.finished``) while RTP audio arrives; then connect the chat and round-trip a message.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, async_playwright

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.procs import start_server  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--allow-loopback-in-peer-connection",
    "--disable-gpu",
]
STEP_SECONDS = 20_000  # Playwright timeouts are in ms


async def events_named(page: Page, source: str, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await page.evaluate(
        "([source, name]) => demo.events.filter(e => e.source === source && e.data && e.data.event === name)"
        ".map(e => e.data)",
        [source, name],
    )
    return found


async def wait_event(page: Page, source: str, name: str, **match: Any) -> dict[str, Any]:
    handle = await page.wait_for_function(
        """([source, name, match]) => demo.events.find(e => e.source === source && e.data
             && e.data.event === name && Object.entries(match).every(([k, v]) => e.data[k] === v))""",
        arg=[source, name, match],
        timeout=STEP_SECONDS,
    )
    found: dict[str, Any] = (await handle.json_value())["data"]
    return found


async def audio_grows(page: Page, before: dict[str, int] | None) -> dict[str, int] | None:
    """inbound-rtp stats once more audio bytes have arrived than ``before`` (polled, bounded)."""
    floor = before["bytesReceived"] if before else 0
    deadline = time.monotonic() + STEP_SECONDS / 1000
    while True:
        now: dict[str, int] | None = await page.evaluate("demo.inboundAudio()")
        if (now and now["bytesReceived"] > floor) or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


async def drive(base_url: str, port: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not on PATH"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            # The page's CSP forbids eval; Playwright's wait_for_function needs it for its own probes.
            page = await browser.new_page(bypass_csp=True)
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            result["console"] = console
            await page.goto(f"http://localhost:{port}/demo")
            result["mint_base"] = await page.evaluate("demo.mintBase")

            # -- voice ---------------------------------------------------------------------
            await page.click("#voice-start")
            await page.wait_for_function("demo.voiceState === 'connected'", timeout=STEP_SECONDS)
            greeting = await wait_event(page, "voice", "bot.finished")
            result["greeting"] = greeting.get("text")
            await page.fill("#voice-text", "hello from chromium")
            await page.click("#voice-send")
            said = await wait_event(page, "voice", "user.message", text="hello from chromium")
            echoed = await wait_event(page, "voice", "bot.speaking", text="You said: hello from chromium")
            finished = await wait_event(page, "voice", "bot.finished", message_id=echoed["message_id"])
            result["user_message"] = said["text"]
            result["bot_words"] = [
                w["word"]
                for w in await events_named(page, "voice", "bot.word")
                if w["message_id"] == echoed["message_id"]
            ]
            result["bot_text"] = await page.evaluate("id => demo.botText[id]", echoed["message_id"])
            result["bot_finished_ms"] = finished.get("duration_ms")
            result["audio_before"] = await page.evaluate("demo.inboundAudio()")
            result["audio_after"] = await audio_grows(page, result["audio_before"])
            result["transcript"] = await page.inner_text("#voice-transcript")
            # The fake microphone beeps; the server's energy detector may report it (informational).
            result["speech_started"] = len(await events_named(page, "voice", "speech.started"))

            # -- chat ----------------------------------------------------------------------
            await page.click("#chat-start")
            await page.wait_for_function("demo.chatState === 'connected'", timeout=STEP_SECONDS)
            await page.fill("#chat-text", "hi chat")
            await page.click("#chat-send")
            done = await wait_event(page, "chat", "chat.done", text="You said: hi chat")
            result["chat_done"] = done["text"]
            result["chat_tokens"] = len(await events_named(page, "chat", "chat.token"))

            # -- hang up: the server closes the peer -----------------------------------------
            await page.click("#voice-stop")
            result["errors"] = await page.evaluate("demo.errors")
        finally:
            await browser.close()
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        deadline = time.monotonic() + 20
        while True:
            counts = (await http.get("/debug/sessions")).json()
            if counts["peers"] == 0 and counts["by_transport"].get("webrtc", 0) == 0:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        result["after_hangup"] = counts
    return result


def main() -> int:
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this process's namespace
    if interfaces != ["lo"]:
        print(
            f"refusing to run outside a loopback-only namespace (interfaces: {interfaces})", file=sys.stderr
        )
        return 2
    server = start_server({"VOICE_DEV": "1", "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1"})
    try:
        result = asyncio.run(asyncio.wait_for(drive(server.url, server.port), 120))
    except BaseException as exc:
        print(f"driver failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("---- server log ----\n" + server.log()[-6000:], file=sys.stderr)
        return 1
    finally:
        code = server.stop()
    result["server_exit"] = code
    result["interfaces"] = interfaces
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
