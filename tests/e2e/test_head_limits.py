"""Request heads are bounded in time and size by the server itself (issue 15 Medium 11):
a head that stalls is closed, one over VOICE_MAX_HEADER_BYTES is refused, and a flood of
unfinished multi-megabyte heads does not grow the process; ordinary requests and WebSockets
are untouched."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_head_limits_0123456789"
HEAD = b"GET /healthz HTTP/1.1\r\nHost: test\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server({"VOICE_DEV": "1", "VOICE_API_KEYS": f"acme:{KEY}", "VOICE_HEADER_TIMEOUT": "1"})
    yield proc
    proc.stop()


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed); a timeout fails."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def read_one_response(sock: socket.socket) -> bytes:
    """One whole response: uvicorn may write its head and body separately, so one recv can
    return only the head and leave the body to be mistaken for the next answer."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_a_head_that_stalls_is_closed_after_the_header_timeout(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(HEAD)  # no blank line: the head never ends
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert time.monotonic() - started < 10
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_silent_connection_is_closed_after_the_header_timeout(server: ServerProcess) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
    assert time.monotonic() - started < 10


def test_the_next_head_on_a_kept_alive_connection_has_the_same_deadline(server: ServerProcess) -> None:
    """uvicorn's keep-alive timer stops at the first byte of the next request."""
    with connect(server) as sock:
        sock.sendall(HEAD + b"\r\n")
        assert read_one_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert time.monotonic() - started < 10
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def test_a_head_over_the_limit_is_refused_with_431(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(HEAD + b"X-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_small_head_with_a_large_body_in_the_same_read_is_not_refused(server: ServerProcess) -> None:
    body = b'{"object": "whatsapp_business_account", "entry": [], "pad": "' + b"a" * 300_000 + b'"}'
    head = b"POST /whatsapp/webhook HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    with connect(server) as sock:
        sock.sendall(head + body)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_flood_of_unfinished_huge_heads_is_refused_without_growing_the_process(
    server: ServerProcess,
) -> None:
    """Before: 20 connections x 10 MB of one unfinished header grew the server by ~200 MB."""
    before = rss_bytes(server.proc.pid)
    sockets = [connect(server) for _ in range(20)]
    refused = 0
    chunk = b"a" * 65536
    try:
        for sock in sockets:
            sock.sendall(HEAD + b"X-Pad: ")
        for sock in sockets:
            try:
                for _ in range(160):  # 10 MB, never a line end
                    sock.sendall(chunk)
            except OSError:  # the server closed it (a reset or a broken pipe)
                refused += 1
        grown = rss_bytes(server.proc.pid) - before
    finally:
        for sock in sockets:
            sock.close()
    assert grown < 100 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"
    assert refused == len(sockets)


async def test_requests_and_websockets_still_work_past_the_header_timeout(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for _ in range(3):  # one kept-alive connection
            assert (await http.get("/healthz")).status_code == 200
        sdk = await SdkClient.connect(server.url, KEY)
        try:
            await sdk.create_agent("head-limits")
            await asyncio.sleep(2)  # past VOICE_HEADER_TIMEOUT: an upgraded socket is not a head
            await sdk.send({"event": "ping"})
            assert (await sdk.wait_for("pong"))["event"] == "pong"
        finally:
            await sdk.close()
        await asyncio.sleep(1.5)  # the kept-alive connection idled past the header timeout too
        assert (await http.get("/healthz")).status_code == 200
