"""Drive a page that speaks @pinecall/web's frames (``web_client.js``) in real headless Chromium.

Runs inside a loopback-only network namespace, as ``driver.py`` does (re-executed there by
``test_web_client_browser.py``). The page is served from ``http://localhost:<port>``, another
origin than the voice server at ``http://127.0.0.1:<port>``, so every mint is a cross-origin
fetch. An SDK agent (tests/support/sdk.py) registers with ``allowed_origins`` and, for the
hangup, sends ``call.hangup``. Chromium's fake microphone plays a silent WAV, so no speech
resets the idle timer: only the page's 1 s pings flow. Prints one ``RESULT <json>`` line.

Steps: a refused mint read by ``fetch``; a ChatSession for an agent that is not online; a
ChatSession with a spent token; a voice session left idle (``VOICE_SESSION_IDLE_SECONDS=3``)
until ``session.idle_warning`` and ``session.timeout``; a voice session the agent hangs up,
timed from the ``call.hangup`` to the page's "idle".
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
import wave
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.browser.driver import CHROMIUM_FLAGS  # noqa: E402
from tests.support.procs import ServerProcess, start_server  # noqa: E402
from tests.support.sdk import SdkClient  # noqa: E402

KEY = "sk_test_web_client_browser_0123456789"
AGENT = "web-page"
IDLE_SECONDS = 3
WAIT_MS = 15_000
PAGE = """<!doctype html><meta charset="utf-8"><title>web client</title>
<script src="/web_client.js"></script>
<script>
// Test glue: settle(obj, status, ms) waits until obj.status leaves `status` (or ms pass).
client.settle = (obj, status, ms) => new Promise((resolve) => {
  const started = Date.now();
  const tick = () => (obj.status !== status || Date.now() - started > ms ? resolve() : setTimeout(tick, 10));
  tick();
});
client.chatOutcome = async (opts) => {
  const chat = new client.Chat(opts.token
    ? { ...opts, tokenProvider: async () => ({ token: opts.token, server: opts.server }) }
    : opts);
  await chat.connect();
  await client.settle(chat, "connecting", 5000);
  const outcome = { status: chat.status, error: chat.error };
  chat.disconnect();
  return outcome;
};
</script>"""


class PageHandler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/web_client.js":
            body, kind = (Path(__file__).with_name("web_client.js")).read_bytes(), "text/javascript"
        else:
            body, kind = PAGE.encode(), "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def silent_wav(path: Path) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(b"\0\0" * 48_000)


def entries(log: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    return [e for e in log if e["source"] == source]


def first_at(log: list[dict[str, Any]], source: str, what: str, **data: Any) -> float | None:
    for e in entries(log, source):
        got = e["data"]
        if e["what"] == what and (
            not data or (isinstance(got, dict) and all(got.get(k) == v for k, v in data.items()))
        ):
            return float(e["at"])
    return None


async def voice_session(page: Page, name: str, server_url: str) -> None:
    await page.evaluate(
        "([name, server, agent]) => { window[name] = new client.Voice({ name, server, agent }); "
        "window[name].connect(); }",
        [name, server_url, AGENT],
    )
    await page.wait_for_function(f"{name}.status === 'connected'", timeout=WAIT_MS)


async def drive(server: ServerProcess, page_url: str, wav: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    sdk = await SdkClient.connect(server.url, KEY)
    await sdk.create_agent(AGENT, allowed_origins=["http://localhost:*"])
    chromium = shutil.which("chromium")
    assert chromium is not None, "chromium is not on PATH"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
        )
        try:
            page = await browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            await page.goto(page_url)

            # -- a refused mint, read by fetch from the page's origin --------------------------
            result["mint_refused"] = await page.evaluate(
                """async (server) => {
                     try {
                       const r = await fetch(`${server}/chat/token?agent_id=nobody-here`);
                       return { status: r.status, body: await r.json() };
                     } catch (e) { return { failed: String(e) }; }
                   }""",
                server.url,
            )
            result["chat_unknown_agent"] = await page.evaluate(
                "(server) => client.chatOutcome({ server, agent: 'nobody-here' })", server.url
            )

            # -- a refused chat token: one that a first session spent --------------------------
            minted = await page.evaluate(
                "async ([server, agent]) => (await fetch(`${server}/chat/token?agent_id=${agent}`)).json()",
                [server.url, AGENT],
            )
            first = await page.evaluate(
                "([server, token]) => client.chatOutcome({ name: 'chat-first', server, token })",
                [server.url, minted["token"]],
            )
            result["chat_first_use"] = first
            result["chat_spent"] = await page.evaluate(
                "([server, token]) => client.chatOutcome({ name: 'chat-spent', server, token })",
                [server.url, minted["token"]],
            )

            # -- idle: only pings flow, the warning and the timeout still come -----------------
            await voice_session(page, "idle", server.url)
            await sdk.wait_for("call.started")
            await page.wait_for_function("idle.status === 'idle'", timeout=WAIT_MS)
            result["idle_pings"] = await page.evaluate("client.pings")

            # -- hangup by the agent -----------------------------------------------------------
            await voice_session(page, "hung", server.url)
            started = await sdk.wait_for("call.started")
            sent_at = time.time() * 1000
            await sdk.send({"event": "call.hangup", "call_id": started["call_id"]})
            await page.wait_for_function("hung.status === 'idle'", timeout=WAIT_MS)
            result["hangup_sent_at"] = sent_at
            result["log"] = await page.evaluate("client.log")
            result["console"] = console
        finally:
            await browser.close()
            await sdk.close()
    return result


def main() -> int:
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        print(
            f"refusing to run outside a loopback-only namespace (interfaces: {interfaces})", file=sys.stderr
        )
        return 2
    server = start_server(
        {
            "VOICE_TOKEN_SECRET": "web-client-browser-secret-0123456789",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
            "VOICE_SESSION_IDLE_SECONDS": str(IDLE_SECONDS),
        }
    )
    pages = ThreadingHTTPServer(("127.0.0.1", 0), partial(PageHandler))
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    page_url = f"http://localhost:{pages.server_address[1]}/"
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "silence.wav"
        silent_wav(wav)
        try:
            result = asyncio.run(asyncio.wait_for(drive(server, page_url, wav), 150))
        except BaseException as exc:
            print(f"driver failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            print("---- server log ----\n" + server.log()[-6000:], file=sys.stderr)
            return 1
        finally:
            pages.shutdown()
            server.stop()
    result["interfaces"] = interfaces
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
