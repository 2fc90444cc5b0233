"""The auto-pipeline's own connection against real redis-server processes: where it connects
(password, ACL user, db, unix socket, TLS), how it fails (stalled server, killed connection,
restart, closed store) and that it recovers without the store being rebuilt.

Everything goes through the public store API (``open_store``, ``issue_token``,
``consume_token``, ``hit``, ``aclose``); a plain redis-py client only looks at what landed
on the server or pokes it (``CLIENT KILL``, ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis

from server.core.ratelimit import RateLimit, Verdict
from server.errors import StoreUnavailable
from server.store import Store, mints, open_store
from server.store.base import Hit
from tests.support.procs import RedisProcess, free_port, start_redis

# Generous bounds: the store's reply timeout is 2 s; these only catch a hang.
NO_HANG = 10.0
MINT_SHA = mints.SHA

T = TypeVar("T")
StartRedis = Callable[..., RedisProcess]
OpenStore = Callable[[str], Store]


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[StartRedis]:
    """Start redis-servers for this test (each in its own dir); all stopped (and resumed
    first, should a test leave one SIGSTOPped) at teardown."""
    started: list[RedisProcess] = []
    counter = itertools.count()

    def start(port: int | None = None, extra: list[str] | None = None) -> RedisProcess:
        workdir = tmp_path / f"redis-{next(counter)}"
        workdir.mkdir()
        server = start_redis(port, extra, workdir=str(workdir))
        started.append(server)
        return server

    yield start
    for server in started:
        _resume(server)
        server.stop()


def _pause(server: RedisProcess) -> None:
    os.kill(server.proc.pid, signal.SIGSTOP)


def _resume(server: RedisProcess) -> None:
    if server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def _admin(port: int, **options: Any) -> AsyncIterator[Redis]:
    """A plain redis-py client, to look at the server or poke it."""
    client = Redis(host="127.0.0.1", port=port, decode_responses=True, **options)
    try:
        yield client
    finally:
        await client.aclose()


async def _no_hang(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, NO_HANG)


async def _round_trip(store: Store, jti: str) -> None:
    """Issue and consume one token, rate-limited (the mint script) and plain (SET)."""
    assert (await _no_hang(store.issue_token(jti, 60, [Hit("rt", RateLimit(1000, 60))]))).allowed
    assert await _no_hang(store.consume_token(jti)) is True
    assert await _no_hang(store.consume_token(jti)) is False
    assert (await _no_hang(store.issue_token(jti + ".plain", 60, []))).allowed
    assert await _no_hang(store.consume_token(jti + ".plain")) is True


# -- where to connect, how to authenticate ------------------------------------------------------
async def test_password_in_the_url_authenticates(redis_factory: StartRedis, stores: OpenStore) -> None:
    server = redis_factory(extra=["--requirepass", "s3cret"])
    store = stores(f"redis://:s3cret@127.0.0.1:{server.port}/0")
    await _round_trip(store, "pw")
    assert (await store.hit([Hit("h", RateLimit(5, 60))])).allowed
    async with _admin(server.port, password="s3cret") as admin:
        assert await admin.get("vs:rl:h") == "1"


@pytest.mark.parametrize(
    "credentials", [":wrong@", "", "nobody:s3cret@"], ids=["wrong-password", "none", "unknown-user"]
)
async def test_bad_credentials_fail_closed_without_hanging(
    redis_factory: StartRedis, stores: OpenStore, credentials: str
) -> None:
    server = redis_factory(extra=["--requirepass", "s3cret"])
    store = stores(f"redis://{credentials}127.0.0.1:{server.port}/0")
    for _ in range(2):  # every attempt reconnects and fails the same way
        with pytest.raises(StoreUnavailable):
            await _no_hang(store.issue_token("nope", 60, [Hit("k", RateLimit(5, 60))]))
        with pytest.raises(StoreUnavailable):
            await _no_hang(store.consume_token("nope"))
        with pytest.raises(StoreUnavailable):
            await _no_hang(store.issue_token("nope", 60, []))
    async with _admin(server.port, password="s3cret") as admin:
        assert await admin.dbsize() == 0


async def test_an_acl_user_authenticates_as_itself(redis_factory: StartRedis, stores: OpenStore) -> None:
    # The default user's password differs: AUTH without the user name would be refused.
    server = redis_factory(
        extra=["--requirepass", "other", "--user", "alice", "on", ">s3cret", "~vs:*", "+@all"]
    )
    store = stores(f"redis://alice:s3cret@127.0.0.1:{server.port}/0")
    await _round_trip(store, "acl")


async def test_the_db_in_the_url_is_selected(redis_factory: StartRedis, stores: OpenStore) -> None:
    server = redis_factory()
    store = stores(f"redis://127.0.0.1:{server.port}/3")
    hits = [Hit("k:db", RateLimit(10, 60))]
    assert (await _no_hang(store.issue_token("in-db3", 60, hits))).allowed
    assert (await _no_hang(store.issue_token("plain-db3", 60, []))).allowed
    async with _admin(server.port, db=3) as db3, _admin(server.port, db=0) as db0:
        assert await db3.exists("vs:tok:in-db3", "vs:tok:plain-db3", "vs:rl:k:db") == 3
        assert await db0.dbsize() == 0
        assert await _no_hang(store.consume_token("in-db3")) is True
        assert await db3.exists("vs:tok:in-db3") == 0
        await db0.set("vs:tok:only-db0", 1)
        assert await _no_hang(store.consume_token("only-db0")) is False  # DEL ran in db 3
        assert await db0.exists("vs:tok:only-db0") == 1


@pytest.mark.parametrize("db", [0, 2])
async def test_a_unix_socket(redis_factory: StartRedis, stores: OpenStore, db: int) -> None:
    # Not under tmp_path: a socket path must stay within ~107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="vs-sock-"))
    try:
        sock = directory / "redis.sock"
        server = redis_factory(extra=["--unixsocket", str(sock), "--unixsocketperm", "700"])
        assert sock.exists()
        store = stores(f"unix://{sock}?db={db}")
        assert (await _no_hang(store.issue_token("via-unix", 60, [Hit("u", RateLimit(5, 60))]))).allowed
        async with _admin(server.port, db=db) as admin:  # over TCP
            assert await admin.exists("vs:tok:via-unix") == 1
            # The store's connection is the only one on the socket.
            on_socket = [c for c in await admin.client_list() if c["addr"].startswith(str(sock))]
            assert len(on_socket) == 1, on_socket
        await _round_trip(store, "unix")
        assert await _no_hang(store.consume_token("via-unix")) is True
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# redis-py fills in what a URL leaves out (host localhost, port 6379) and the rest of the store
# (API keys, agents, /healthz ping) connects through it: the pipeline must reach the same server.
async def test_a_url_without_a_host_means_localhost(redis_factory: StartRedis, stores: OpenStore) -> None:
    server = redis_factory()
    store = stores(f"redis://:{server.port}/0")
    await store.ping()  # redis-py connects to localhost:<port>
    await _round_trip(store, "no-host")


async def test_a_url_without_a_port_means_6379(redis_factory: StartRedis, stores: OpenStore) -> None:
    with socket.socket() as probe:  # something else on 6379 would answer for our server
        try:
            probe.bind(("127.0.0.1", 6379))
        except OSError as exc:
            pytest.skip(f"the default port 6379 is taken: {exc}")
    try:
        redis_factory(6379)
    except (RuntimeError, TimeoutError) as exc:  # lost a race for the port
        pytest.skip(f"cannot start a redis-server on 6379: {exc}")
    store = stores("redis://127.0.0.1/0")
    await store.ping()
    await _round_trip(store, "no-port")


# -- TLS --------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=20)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def _make_server_cert(directory: Path, ca: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture
def tls_redis(redis_factory: StartRedis, tmp_path: Path) -> tuple[RedisProcess, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed (needed to make a throwaway CA)")
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_ca(certs, "ca")
    _make_ca(certs, "stranger")
    _make_server_cert(certs, "ca")
    port = free_port()
    tls = [
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(certs / "server.pem"),
        "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.pem"),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    try:
        server = redis_factory(port, tls)  # listens on the TLS port only
    except RuntimeError as exc:  # exited at once: built without TLS
        pytest.skip(f"this redis-server does not start with TLS options: {exc}")
    return server, certs


async def test_tls_with_the_servers_ca(tls_redis: tuple[RedisProcess, Path], stores: OpenStore) -> None:
    server, certs = tls_redis
    store = stores(
        f"rediss://127.0.0.1:{server.port}/1?ssl_ca_certs={certs / 'ca.pem'}&ssl_cert_reqs=required"
    )
    await _round_trip(store, "tls")
    assert (await _no_hang(store.issue_token("tls-kept", 60, []))).allowed
    async with _admin(server.port, db=1, ssl=True, ssl_ca_certs=str(certs / "ca.pem")) as admin:
        assert await admin.exists("vs:tok:tls-kept") == 1


async def test_tls_refuses_a_server_cert_from_another_ca(
    tls_redis: tuple[RedisProcess, Path], stores: OpenStore
) -> None:
    server, certs = tls_redis
    store = stores(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certs / 'stranger.pem'}")
    with pytest.raises(StoreUnavailable):
        await _no_hang(store.issue_token("mitm", 60, []))
    with pytest.raises(StoreUnavailable):
        await _no_hang(store.consume_token("mitm"))


# -- failures and recovery --------------------------------------------------------------------
async def test_a_stalled_server_times_out_then_the_same_store_recovers(
    redis_factory: StartRedis, stores: OpenStore
) -> None:
    server = redis_factory()
    store = stores(server.url)
    await _round_trip(store, "before")  # the connection is open
    _pause(server)
    try:
        hits = [Hit("stall", RateLimit(100, 60))]
        results = await _no_hang(
            asyncio.gather(
                *(store.issue_token(f"stalled-{i}", 60, hits) for i in range(20)),
                store.consume_token("before"),
                return_exceptions=True,
            )
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        causes = [r.__cause__ for r in results if isinstance(r, BaseException)]
        assert len(causes) == 21 and all(isinstance(c, rexc.TimeoutError) for c in causes), causes
    finally:
        _resume(server)
    await _round_trip(store, "after")  # the same object, no restart


async def test_a_stalled_server_fails_a_fresh_connection_too(
    redis_factory: StartRedis, stores: OpenStore
) -> None:
    server = redis_factory()
    store = stores(server.url)
    _pause(server)  # the kernel still accepts the TCP connection; the set-up gets no reply
    try:
        with pytest.raises(StoreUnavailable):
            await _no_hang(store.issue_token("never", 60, [Hit("k", RateLimit(5, 60))]))
    finally:
        _resume(server)
    await _round_trip(store, "after")


async def test_a_connection_killed_server_side_reconnects(
    redis_factory: StartRedis, stores: OpenStore
) -> None:
    server = redis_factory()
    store = stores(server.url)
    await _round_trip(store, "before")
    async with _admin(server.port) as admin:
        for round_ in range(3):
            killed = await admin.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1  # the store's connection was there to kill
            failures = await _at_most_one_failure(store, f"k{round_}")
            assert failures <= 1
            await _round_trip(store, f"after-{round_}")


async def test_a_restarted_server_is_reconnected_and_the_mint_script_reloaded(
    redis_factory: StartRedis, stores: OpenStore
) -> None:
    server = redis_factory()
    store = stores(server.url)
    await _round_trip(store, "before")
    server.stop()
    redis_factory(server.port)  # same port, empty script cache
    assert await _at_most_one_failure(store, "restart", plain=True) <= 1
    async with _admin(server.port) as admin:
        # Loaded by the new connection's set-up, before any mint ran on it.
        assert await admin.script_exists(MINT_SHA) == [True]
    await _round_trip(store, "after")


async def _at_most_one_failure(store: Store, jti: str, plain: bool = False) -> int:
    """Operations until one succeeds; returns the StoreUnavailable count before it (≤ 2 tries)."""
    for failures in range(2):
        try:
            if plain:
                await _no_hang(store.consume_token(jti))
            else:
                assert (await _no_hang(store.issue_token(jti, 60, [Hit("x", RateLimit(1000, 60))]))).allowed
            return failures
        except StoreUnavailable:
            continue
    return 2


async def test_script_flush_falls_back_to_eval_and_counts_every_mint(
    redis_factory: StartRedis, stores: OpenStore
) -> None:
    server = redis_factory()
    store = stores(server.url)
    hits = [Hit("k:x", RateLimit(100, 60))]
    assert (await _no_hang(store.issue_token("one", 60, hits))).allowed
    async with _admin(server.port) as admin:
        assert await admin.script_flush() is True
        assert await admin.script_exists(MINT_SHA) == [False]
        assert (await _no_hang(store.issue_token("two", 60, hits))).allowed
        assert await admin.get("vs:rl:k:x") == "2"  # NOSCRIPT ran nothing; EVAL counted once
        assert await admin.exists("vs:tok:one", "vs:tok:two") == 2
        assert (await _no_hang(store.issue_token("three", 60, hits))).allowed
        assert await admin.get("vs:rl:k:x") == "3"
    assert await store.consume_token("two") is True


async def test_rate_limits_refuse_through_the_pipeline(redis_factory: StartRedis, stores: OpenStore) -> None:
    server = redis_factory()
    store = stores(server.url)
    hits = [Hit("k:tight", RateLimit(2, 60))]
    assert (await _no_hang(store.issue_token("a", 60, hits))).allowed
    assert (await _no_hang(store.issue_token("b", 60, hits))).allowed
    refused = await _no_hang(store.issue_token("c", 60, hits))
    assert not refused.allowed
    assert 1 <= refused.retry_after <= 60
    async with _admin(server.port) as admin:
        assert await admin.exists("vs:tok:a", "vs:tok:b") == 2
        assert await admin.exists("vs:tok:c") == 0
        assert await admin.get("vs:rl:k:tight") == "3"
    assert not (await _no_hang(store.hit(hits))).allowed
    # The first refusing bucket decides; a loose bucket alone still allows.
    assert (await _no_hang(store.hit([Hit("k:loose", RateLimit(5, 60))]))).allowed
    assert await store.consume_token("c") is False
    assert await store.consume_token("a") is True


async def test_concurrent_mints_in_one_batch_get_their_own_replies(
    redis_factory: StartRedis, stores: OpenStore
) -> None:
    """Replies are routed in order: a mint is reported allowed exactly when its token exists."""
    server = redis_factory()
    store = stores(server.url)
    hits = [Hit("k:burst", RateLimit(10, 60))]
    jtis = [f"burst-{i}" for i in range(60)]
    mint_all = asyncio.gather(*(store.issue_token(j, 60, hits) for j in jtis))
    consume_all = asyncio.gather(*(store.consume_token(f"unknown-{i}") for i in range(20)))
    hit_all = asyncio.gather(*(store.hit([Hit("k:other", RateLimit(1000, 60))]) for _ in range(20)))
    mints, consumes, others = await _no_hang(asyncio.gather(mint_all, consume_all, hit_all))
    assert sum(v.allowed for v in mints) == 10
    assert consumes == [False] * 20
    assert all(v.allowed for v in others)
    async with _admin(server.port) as admin:
        for jti, verdict in zip(jtis, mints, strict=True):
            assert bool(await admin.exists(f"vs:tok:{jti}")) is verdict.allowed, jti
        assert await admin.get("vs:rl:k:other") == "20"
    consumed = await _no_hang(asyncio.gather(*(store.consume_token(j) for j in jtis for _ in range(2))))
    assert sum(consumed) == 10


async def test_an_error_reply_fails_only_its_request(redis_factory: StartRedis, stores: OpenStore) -> None:
    server = redis_factory()
    store = stores(server.url)
    async with _admin(server.port) as admin:
        await admin.hset("vs:rl:k:wrongtype", "a", "b")  # INCR on it is a WRONGTYPE error
    bad = [Hit("k:wrongtype", RateLimit(5, 60))]
    good = [Hit("k:fine", RateLimit(5, 60))]
    results = await _no_hang(
        asyncio.gather(
            store.issue_token("bad", 60, bad),
            store.issue_token("good", 60, good),
            store.hit(bad),
            store.hit(good),
            return_exceptions=True,
        )
    )
    bad_mint, good_mint, bad_hit, good_hit = results
    assert isinstance(bad_mint, StoreUnavailable) and isinstance(bad_hit, StoreUnavailable), results
    assert isinstance(good_mint, Verdict) and good_mint.allowed, results
    assert isinstance(good_hit, Verdict) and good_hit.allowed, results
    await _round_trip(store, "still-in-step")


# -- closing ------------------------------------------------------------------------------------
async def test_aclose_fails_requests_in_flight_and_queued(redis_factory: StartRedis) -> None:
    server = redis_factory()
    store = open_store(server.url)
    await _round_trip(store, "open")
    _pause(server)
    try:
        hits = [Hit("k", RateLimit(100, 60))]
        in_flight = [asyncio.create_task(store.issue_token(f"f{i}", 60, hits)) for i in range(5)]
        await asyncio.sleep(0.2)  # written; the stopped server never answers
        queued = [asyncio.create_task(store.consume_token(f"q{i}")) for i in range(5)]
        await asyncio.sleep(0)  # queued, not yet flushed
        assert not any(t.done() for t in in_flight + queued)
        await store.aclose()  # in this task: wait_for would run it after the pending flush
        # Failed by the close itself (not later by a timeout or a new connection's failure).
        await _settle(in_flight + queued)
        results = await _no_hang(asyncio.gather(*in_flight, *queued, return_exceptions=True))
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        with pytest.raises(StoreUnavailable):
            await _no_hang(store.issue_token("late", 60, []))
    finally:
        _resume(server)
    await _no_connections_left(server)


async def test_aclose_while_connecting(redis_factory: StartRedis) -> None:
    server = redis_factory()
    store = open_store(server.url)
    _pause(server)  # the connection opens; its set-up waits for a reply
    try:
        pending = [asyncio.create_task(store.issue_token(f"c{i}", 60, [])) for i in range(3)]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in pending)
        await store.aclose()  # in this task: wait_for would run it after the pending flush
        await _settle(pending)
        results = await _no_hang(asyncio.gather(*pending, return_exceptions=True))
        assert all(isinstance(r, StoreUnavailable) for r in results), results
    finally:
        _resume(server)
    await _no_connections_left(server)


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    """A few loop turns (no waiting on the clock): tasks whose futures aclose() failed finish."""
    for _ in range(10):
        await asyncio.sleep(0)
    assert all(t.done() for t in tasks), "requests still pending after aclose()"


async def _no_connections_left(server: RedisProcess) -> None:
    """Only the asking client is connected (the store closed its sockets), within a few seconds."""
    async with _admin(server.port) as admin:
        for _ in range(100):
            clients = await admin.client_list()
            if len(clients) == 1:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"connections left open after aclose: {clients}")


async def test_each_batch_reports_one_round_trip(redis_factory: StartRedis, stores: OpenStore) -> None:
    """voice_store_latency_seconds is fed per batch: 50 concurrent mints are one observation."""
    server = redis_factory()
    store = stores(server.url)
    seen: list[float] = []
    store.observe_round_trips(seen.append)
    await _no_hang(store.issue_token("warm", 60, []))  # opens the connection first
    seen.clear()
    await _no_hang(asyncio.gather(*(store.issue_token(f"rt-{i}", 60, []) for i in range(50))))
    assert len(seen) == 1 and 0 < seen[0] < 10
    await _no_hang(store.consume_token("rt-0"))
    assert len(seen) == 2


async def test_a_mint_that_cannot_be_sent_fails_instead_of_waiting(
    redis_factory: StartRedis, stores: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_factory()
    store = stores(server.url)

    def broken(self: mints.MintBatcher, chunk: list[object]) -> None:
        raise ValueError("cannot pack this")

    monkeypatch.setattr(mints.MintBatcher, "_call", broken)
    with pytest.raises(StoreUnavailable):
        await _no_hang(store.issue_token("unsendable", 60, []))
    assert await _no_hang(store.consume_token("unsendable")) is False  # the pipeline still works
