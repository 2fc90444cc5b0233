"""The auto-pipeline's RESP packer writes what Redis expects (checked against redis-py's packer)."""

from __future__ import annotations

from redis.connection import Connection

from server.store.pipeline import pack


def test_pack_matches_redis_py() -> None:
    commands = [("SET", "vs:tok:é", 1, "PX", 63000), ("INCR", "vs:rl:k:key_1"), ("DEL", b"raw\r\nbytes")]
    expected = b"".join(Connection().pack_commands(commands))
    assert pack(commands) == expected
