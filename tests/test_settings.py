"""Settings are read once, validated, and fail naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.core.ratelimit import RateLimit
from server.settings import Settings, SettingsError, read_env_file


def test_dev_defaults_need_no_configuration() -> None:
    settings = Settings.from_env({}, dev=True)
    assert settings.store_url == "memory://"
    assert settings.token_ttl == 60
    assert len(settings.token_secrets) == 1
    assert settings.public_url == "http://127.0.0.1:8080"


OLD, NEW = "old-" + "o" * 40, "new-" + "n" * 40


def test_production_needs_a_token_secret() -> None:
    with pytest.raises(SettingsError, match="VOICE_TOKEN_SECRET"):
        Settings.from_env({})


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "VOICE_TOKEN_SECRET": f"{OLD}, {NEW}",
            "VOICE_TOKEN_TTL": "30",
            "VOICE_API_KEYS": "acme:sk_0123456789abcdef,globex:sk_fedcba9876543210",
            "VOICE_RATE_LIMIT_KEY": "20/second",
            "VOICE_RATE_LIMIT_PUBLIC": "0",
            "VOICE_PUBLIC_URL": "https://voice.example.com/",
            "VOICE_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
            "VOICE_ICE_SERVERS": '[{"urls": "stun:stun.example.com:3478"}]',
            "VOICE_HEADER_TIMEOUT": "2.5",
            "VOICE_MAX_HEADER_BYTES": "8192",
        }
    )
    assert settings.token_secrets == (OLD, NEW)
    assert settings.token_ttl == 30
    assert settings.bootstrap_keys == (("acme", "sk_0123456789abcdef"), ("globex", "sk_fedcba9876543210"))
    assert settings.rate_limit_key == RateLimit(20, 1)
    assert not settings.rate_limit_public.enabled
    assert settings.public_url == "https://voice.example.com"
    assert settings.public_ws_url == "wss://voice.example.com"
    assert len(settings.trusted_proxies) == 2
    assert settings.rtc_host_addresses == ("127.0.0.1",)
    assert settings.ice_servers[0]["urls"] == "stun:stun.example.com:3478"
    assert (settings.header_timeout, settings.max_header_bytes) == (2.5, 8192)


def test_request_heads_are_bounded_by_default() -> None:
    """Issue 15 Medium 11: limits in the server itself, not only in the load balancer."""
    settings = Settings.from_env({}, dev=True)
    assert (settings.header_timeout, settings.max_header_bytes) == (10.0, 65536)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VOICE_PORT", "70000"),
        ("VOICE_TOKEN_TTL", "abc"),
        ("VOICE_DEV", "maybe"),
        ("VOICE_API_KEYS", "acme:short"),
        ("VOICE_ICE_SERVERS", '[{"nourls": 1}]'),
        ("VOICE_RTC_HOST_ADDRESSES", "localhost"),
        ("VOICE_LOG_LEVEL", "LOUD"),
        ("VOICE_HEADER_TIMEOUT", "0"),
        ("VOICE_MAX_HEADER_BYTES", "100"),
        ("VOICE_MAX_HEADER_BYTES", "64k"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value, "VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd"})


def test_secrets_stay_out_of_the_repr() -> None:
    settings = Settings.from_env(
        {
            "VOICE_TOKEN_SECRET": "topsecret-0123456789abcdef012345",
            "VOICE_API_KEYS": "a:sk_0123456789abcdefgh",
        }
    )
    assert "topsecret" not in repr(settings) and "sk_0123456789abcdefgh" not in repr(settings)


def test_dev_mode_binds_loopback_unless_asked() -> None:
    with pytest.raises(SettingsError, match="loopback"):
        Settings.from_env({"VOICE_HOST": "0.0.0.0"}, dev=True)
    assert Settings.from_env({"VOICE_HOST": "0.0.0.0", "VOICE_ALLOW_PUBLIC_BIND": "1"}, dev=True)


def _variables() -> list[str]:
    source = (Path(__file__).resolve().parents[1] / "server" / "settings.py").read_text()
    return sorted(set(re.findall(r'reader\.get\(\s*"(VOICE_[A-Z0-9_]+)"', source)))


@pytest.mark.parametrize("name", _variables())
@pytest.mark.parametrize("raw", ["abc", "1e999x", "-"])
def test_a_bad_value_is_named_and_explained_in_our_words(name: str, raw: str) -> None:
    """Issue 14 item 5: `VOICE_TOKEN_TTL=abc` said "could not convert string to float: 'abc'"."""
    try:
        Settings.from_env({"VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd", name: raw})
    except SettingsError as exc:
        message = str(exc)
        assert message.startswith(name + ":"), message
        assert "could not convert" not in message and "invalid literal" not in message, message
        assert repr(raw) in message or "expected" in message, message


def test_an_env_file_is_read_as_systemd_and_compose_read_it(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(
        "# a comment\n\n; another\nVOICE_PORT=9000\nexport VOICE_HOST = 0.0.0.0\n"
        "VOICE_PUBLIC_URL='https://a.example.com'\nVOICE_NODE_ID=\"node-x\"\nVOICE_API_KEYS=\n"
    )
    assert read_env_file(str(env_file)) == {
        "VOICE_PORT": "9000",
        "VOICE_HOST": "0.0.0.0",
        "VOICE_PUBLIC_URL": "https://a.example.com",
        "VOICE_NODE_ID": "node-x",
        "VOICE_API_KEYS": "",
    }
    settings = Settings.from_env({"VOICE_PORT": "1"}, env_file=str(env_file), serving=False)
    assert (settings.port, settings.host, settings.node_id) == (9000, "0.0.0.0", "node-x")  # the file wins


def test_a_bad_env_file_line_names_the_file_and_line(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("VOICE_PORT=1\nthis is not an assignment\n")
    with pytest.raises(SettingsError, match=r"line 2: expected NAME=value"):
        read_env_file(str(env_file))


def test_operator_commands_need_neither_a_token_secret_nor_a_loopback_bind() -> None:
    env = {"VOICE_HOST": "0.0.0.0", "VOICE_DEV": "1"}
    with pytest.raises(SettingsError):
        Settings.from_env(env)  # a dev server may not bind there...
    assert Settings.from_env(env, serving=False).host == "0.0.0.0"  # ...a key command may run there
    with pytest.raises(SettingsError, match="VOICE_TOKEN_SECRET"):
        Settings.from_env({})
    assert Settings.from_env({}, serving=False).token_secrets  # a throwaway one, never used to sign


@pytest.mark.parametrize("raw", ["abc", "x" * 31, "x" * 32 + ",short"])
def test_a_token_secret_shorter_than_32_characters_is_refused(raw: str) -> None:
    """Issue 14 item 5: VOICE_TOKEN_SECRET=abc was accepted in production."""
    expected = r"VOICE_TOKEN_SECRET: expected secrets of at least 32 characters.*secret \d of \d has \d+"
    with pytest.raises(SettingsError, match=expected):
        Settings.from_env({"VOICE_TOKEN_SECRET": raw})
    assert Settings.from_env({"VOICE_TOKEN_SECRET": "x" * 32}).token_secrets == ("x" * 32,)


def test_a_flag_stands_in_for_its_variable_which_is_then_not_read() -> None:
    """Issue 14 item 5: `serve --port 9000` failed on a stale VOICE_PORT=abc."""
    with pytest.raises(SettingsError, match="VOICE_PORT"):
        Settings.from_env({"VOICE_PORT": "abc"}, dev=True)
    assert (
        Settings.from_env({"VOICE_PORT": "abc", "VOICE_HOST": "::1::"}, dev=True, port=9000, host="::1").port
        == 9000
    )


def test_a_public_bind_without_a_public_url_is_flagged() -> None:
    secret = {"VOICE_TOKEN_SECRET": "s" * 32}
    assert Settings.from_env({**secret, "VOICE_HOST": "0.0.0.0"}).unreachable_public_url
    assert not Settings.from_env(
        {**secret, "VOICE_HOST": "0.0.0.0", "VOICE_PUBLIC_URL": "https://a.example.com"}
    ).unreachable_public_url
    assert not Settings.from_env(secret).unreachable_public_url  # loopback: the URL is right


ADMIN = "admin-" + "a" * 40


def test_inspection_is_on_in_dev_and_off_elsewhere() -> None:
    assert Settings.from_env({}, dev=True).inspect
    assert not Settings.from_env({"VOICE_TOKEN_SECRET": NEW}).inspect
    assert not Settings.from_env({"VOICE_INSPECT": "0"}, dev=True).inspect


def test_inspection_outside_dev_needs_admin_keys() -> None:
    with pytest.raises(SettingsError, match="VOICE_ADMIN_KEYS"):
        Settings.from_env({"VOICE_TOKEN_SECRET": NEW, "VOICE_INSPECT": "1"})
    settings = Settings.from_env({"VOICE_TOKEN_SECRET": NEW, "VOICE_INSPECT": "1", "VOICE_ADMIN_KEYS": ADMIN})
    assert settings.admin_keys == (ADMIN,) and settings.inspect_journal_max == 10_000


def test_admin_keys_are_long_and_never_an_org_key() -> None:
    with pytest.raises(SettingsError, match=r"VOICE_ADMIN_KEYS.*32 characters"):
        Settings.from_env({"VOICE_ADMIN_KEYS": "short"}, dev=True)
    with pytest.raises(SettingsError, match="VOICE_ADMIN_KEYS: an admin key must not be"):
        Settings.from_env({"VOICE_ADMIN_KEYS": ADMIN, "VOICE_API_KEYS": f"acme:{ADMIN}"}, dev=True)
    with pytest.raises(SettingsError, match="VOICE_INSPECT_JOURNAL_MAX"):
        Settings.from_env({"VOICE_INSPECT_JOURNAL_MAX": "0"}, dev=True)
