"""The access log's buffered writer: the line's fields and layout, redaction, request ids, and
when the buffer is written (its timer, its size bound, close)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from server.logsink import FLUSH_BYTES, AccessSink


def _line(sink: AccessSink, target: str = "/webrtc/token?agent_id=a", **kw: object) -> None:
    path, _, query = target.partition("?")
    args: dict[str, object] = {
        "kind": "http",
        "method": "GET",
        "path": path,
        "query": query,
        "status": 200,
        "code": None,
        "seconds": 0.00123,
        "client": "10.0.0.7",
        "request_id": "r-1",
    }
    args.update(kw)
    sink.line(**args)  # type: ignore[arg-type]


def test_json_line_has_the_operator_fields_and_the_formatter_layout() -> None:
    out = io.StringIO()
    sink = AccessSink("json", 60, out)
    _line(sink, status=403, code="origin_not_allowed", client=None)
    sink.close()
    line = json.loads(out.getvalue())
    assert line["level"] == "info" and line["logger"] == "voice.access" and line["msg"] == "http"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/webrtc/token?agent_id=a", 403)
    assert (line["code"], line["ms"], line["client"], line["request_id"]) == (
        "origin_not_allowed", 1.23, None, "r-1",
    )  # fmt: skip
    assert line["ts"].endswith("Z") and len(line["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_text_line_reads_like_the_text_formatter() -> None:
    out = io.StringIO()
    sink = AccessSink("text", 60, out)
    _line(sink, kind="ws", method="WS", status=101)
    sink.close()
    text = out.getvalue()
    assert " INFO    voice.access: ws method=WS path=/webrtc/token?agent_id=a status=101" in text
    # The order of the lines before issue 11 (scripts/bench_sessions reads "status=200 ms=").
    assert text.endswith("status=101 ms=1.23 client=10.0.0.7 code=None request_id=r-1\n")


def test_query_secrets_and_token_shapes_are_redacted() -> None:
    out = io.StringIO()
    sink = AccessSink("json", 60, out)
    _line(sink, target="/chat/ws?token=cht_SECRET1&api_key=SECRET2")
    _line(sink, target='/x/sk_live_SECRET3?a="b\\c')
    sink.close()
    text = out.getvalue()
    assert "SECRET" not in text
    paths = [json.loads(line)["path"] for line in text.splitlines()]
    assert paths[0] == "/chat/ws?token=[redacted]&api_key=[redacted]"
    assert paths[1].startswith("/x/sk_live_[redacted]") and paths[1].endswith('a="b\\c')


def test_request_id_is_the_clients_when_plain_else_ours() -> None:
    sink = AccessSink("json", 60, io.StringIO())
    assert sink.request_id([(b"host", b"h"), (b"x-request-id", b"req-42.a:b")]) == "req-42.a:b"
    ours = [
        sink.request_id([(b"x-request-id", b'bad"id')]),
        sink.request_id([(b"x-request-id", b"x" * 129)]),
        sink.request_id([]),
    ]
    assert len(set(ours)) == 3 and all(r.endswith(("-1", "-2", "-3")) for r in ours)
    assert len({r.split("-")[0] for r in ours}) == 1
    assert AccessSink().request_id([]).split("-")[0] != ours[0].split("-")[0]  # per process


async def test_lines_wait_for_the_timer_then_go_out_together() -> None:
    out = io.StringIO()
    sink = AccessSink("json", 0.05, out)
    for _ in range(3):
        _line(sink)
    assert out.getvalue() == ""
    await asyncio.sleep(0.2)
    assert len(out.getvalue().splitlines()) == 3
    _line(sink)  # the next line arms a new timer
    await asyncio.sleep(0.2)
    assert len(out.getvalue().splitlines()) == 4
    sink.close()


def test_a_full_buffer_is_written_at_once() -> None:
    out = io.StringIO()
    sink = AccessSink("json", 60, out)
    count = 0
    while not out.getvalue():
        _line(sink)
        count += 1
    written = out.getvalue()
    assert len(written.encode()) >= FLUSH_BYTES > len(written.encode()) - len(written.splitlines()[0]) - 1
    assert len(written.splitlines()) == count
    sink.close()


def test_writes_go_to_the_streams_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("w") as stream:
        stream.write("before\n")  # buffered by the stream: flushed first, so it stays first
        sink = AccessSink("json", 60, stream)
        _line(sink)
        sink.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "before" and json.loads(lines[1])["path"] == "/webrtc/token?agent_id=a"
