"""The pytest plugin (entry point ``pytest11: voice_server``): installed with the package, active
in every pytest run, costing nothing until a test asks for one of its fixtures.

* ``voice_server``: a real server (one process for the whole run, booted on first use on a free
  port with the memory store), reset before each test (``POST /_voice/reset``). It has ``url``,
  ``api_key``, ``admin_key``, ``inspector`` and ``mint()``; ``agent()`` makes more agents.
* ``voice_agent``: a Python agent online on it over ``/client`` (channels ``webrtc`` and
  ``chat``), answering ``You said: <text>``; ``chat()``, ``browser()``, ``mint()``.

Options (each also an environment variable, for CI):

* ``--voice-store-url`` / ``VOICE_TEST_STORE_URL``: boot on that store (``redis://...``).
* ``--voice-setting VOICE_NAME=VALUE`` (repeatable): a setting of the server to boot (the
  caller's own VOICE_* environment is not passed on).
* ``--voice-server-url`` / ``VOICE_TEST_SERVER_URL``: use a server that is already running,
  with ``--voice-api-key`` / ``VOICE_TEST_API_KEY`` and ``--voice-admin-key`` /
  ``VOICE_TEST_ADMIN_KEY``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from server.testkit.agent import VoiceAgent
from server.testkit.process import VoiceServer

OPTIONS = {
    "voice_store_url": ("--voice-store-url", "VOICE_TEST_STORE_URL", "store URL of the server to boot"),
    "voice_server_url": (
        "--voice-server-url",
        "VOICE_TEST_SERVER_URL",
        "URL of a running voice-server to use instead of booting one",
    ),
    "voice_api_key": ("--voice-api-key", "VOICE_TEST_API_KEY", "secret API key of that running server"),
    "voice_admin_key": ("--voice-admin-key", "VOICE_TEST_ADMIN_KEY", "admin key of that running server"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("voice-server", "voice-server test kit")
    for dest, (flag, variable, text) in OPTIONS.items():
        group.addoption(flag, dest=dest, default=None, help=f"{text} (default: ${variable})")
    group.addoption(
        "--voice-setting",
        dest="voice_settings",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a VOICE_* setting of the server to boot (repeatable): --voice-setting VOICE_TOKEN_TTL=5",
    )


def _option(config: pytest.Config, dest: str) -> str | None:
    value = config.getoption(dest)
    if value:
        return str(value)
    return os.environ.get(OPTIONS[dest][1]) or None


@pytest.fixture(scope="session")
def voice_server_process(pytestconfig: pytest.Config) -> Iterator[VoiceServer]:
    """The one server of the run: booted (or attached) on first use, stopped at the end."""
    url = _option(pytestconfig, "voice_server_url")
    if url:
        api_key = _option(pytestconfig, "voice_api_key")
        if not api_key:
            raise pytest.UsageError("--voice-server-url needs --voice-api-key (or VOICE_TEST_API_KEY)")
        server = VoiceServer.attach(url, api_key, _option(pytestconfig, "voice_admin_key"))
    else:
        settings = {}
        for pair in pytestconfig.getoption("voice_settings"):
            name, equals, value = pair.partition("=")
            if not equals or not name.startswith("VOICE_"):
                raise pytest.UsageError(f"--voice-setting wants VOICE_NAME=VALUE, got {pair!r}")
            settings[name] = value
        server = VoiceServer.boot(store_url=_option(pytestconfig, "voice_store_url"), env=settings)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def voice_server(voice_server_process: VoiceServer) -> Iterator[VoiceServer]:
    """The run's server, back to a clean state for this test."""
    voice_server_process.reset()
    yield voice_server_process
    voice_server_process.close_agents()


@pytest.fixture
def voice_agent(voice_server: VoiceServer) -> Iterator[VoiceAgent]:
    """An agent online on ``voice_server`` for this test, offline after it."""
    agent = voice_server.agent()
    yield agent
    agent.close()
