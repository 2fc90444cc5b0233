"""A fake Meta Graph API: a real HTTP server on a free loopback port, in a thread.

Point ``VOICE_WHATSAPP_GRAPH_URL`` at :attr:`FakeGraph.url`. Every request is recorded;
answers are scripted (``fail_next(503, 503)`` answers the next two with 503, then success).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class GraphRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int  # what the fake answered


class FakeGraph:
    def __init__(self) -> None:
        self.requests: list[GraphRequest] = []
        self._script: list[int] = []
        self._cond = threading.Condition()
        self._counter = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._cond:
                    status = fake._script.pop(0) if fake._script else 200
                    fake._counter += 1
                    number = fake._counter
                    # Recorded before the answer goes out: a test that saw the answer's effect
                    # must find the request here.
                    fake.requests.append(GraphRequest(self.path, headers, json.loads(raw), status))
                    fake._cond.notify_all()
                if status == 200:
                    answer: dict[str, Any] = {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": "x", "wa_id": "x"}],
                        "messages": [{"id": f"wamid.fake{number}"}],
                    }
                else:
                    answer = {"error": {"message": f"scripted failure {status}", "code": 1}}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v21.0"

    def fail_next(self, *statuses: int) -> None:
        with self._cond:
            self._script.extend(statuses)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[GraphRequest]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.requests)} Graph requests, expected {count}")
                self._cond.wait(left)
            return list(self.requests)

    async def await_requests(self, count: int, timeout: float = 10.0) -> list[GraphRequest]:
        return await asyncio.to_thread(self.wait_for, count, timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def fake_graph() -> Iterator[FakeGraph]:
    graph = FakeGraph()
    graph.start()
    try:
        yield graph
    finally:
        graph.stop()
