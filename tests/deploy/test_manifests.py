"""deploy/compose.yaml, deploy/haproxy.cfg and deploy/k8s/: schema-valid, lint-clean, and
holding the properties the server relies on (per-node public URLs, /readyz routing, a grace
period longer than the drain, non-root, WebSocket upgrades), with every setting value accepted
by the server's own settings parser. No network, no Docker engine, no cluster."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from server.settings import Settings, SettingsError
from tests.deploy.deployfiles import (
    COMPOSE,
    DEPLOY,
    HAPROXY,
    K8S,
    TEST_TOKEN_SECRET,
    VOICE_NAME,
    compose,
    compose_environment,
    deploy_files,
    k8s_documents,
    k8s_object,
    k8s_pod_environment,
    setting_names,
)

NODES = ("node-a", "node-b")
SHELL_ENV = {"VOICE_TOKEN_SECRET": TEST_TOKEN_SECRET}
# After SIGTERM the server drains for VOICE_DRAIN_SECONDS, then uvicorn gets this long to close.
SERVER_CLOSE_SECONDS = 5


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", duration.strip())
    assert match, f"not a duration: {duration!r}"
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return int(match.group(1)) * unit


# -- every file ------------------------------------------------------------------------------
def test_every_voice_variable_named_in_deploy_is_read_by_the_settings() -> None:
    """A VOICE_* name in any deploy file (values, comments, docs) is one server/settings.py reads."""
    known = setting_names()
    assert len(known) > 30, "the settings scan found too few names to be reading settings.py"
    unknown = {
        f"{path.relative_to(DEPLOY)}: {name}"
        for path in deploy_files()
        for name in VOICE_NAME.findall(path.read_text(errors="replace"))
        if name not in known
    }
    assert not unknown, f"not settings: {sorted(unknown)}"


def test_deploy_yaml_passes_yamllint() -> None:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    paths = sorted({*DEPLOY.glob("*.yaml"), *K8S.rglob("*.yaml")})
    assert COMPOSE in paths and len(paths) >= 7
    problems = [
        f"{path.relative_to(DEPLOY)}:{p.line}: {p.message}"
        for path in paths
        for p in linter.run(path.read_text(), config, str(path))
    ]
    assert not problems, "\n".join(problems)


# -- compose ---------------------------------------------------------------------------------
def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    """The Compose Specification schema vendored by check-jsonschema (no download, no engine)."""
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_two_built_nodes_one_redis_and_a_load_balancer() -> None:
    services = compose()["services"]
    assert set(services) == {*NODES, "redis", "lb"}
    for node in NODES:
        build = services[node]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert services[node]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[node]["read_only"] is True and services[node]["cap_drop"] == ["ALL"]
    assert services["redis"]["image"] == "redis:7"
    assert services["lb"]["image"].startswith("haproxy:")
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["lb"]["volumes"]


def test_compose_nodes_route_on_readyz_and_outlast_the_drain() -> None:
    for node in NODES:
        service = compose()["services"][node]
        probe = ["CMD", "python", "/opt/voice-server/healthcheck.py", "/readyz"]
        assert service["healthcheck"]["test"] == probe
        drain = float(compose_environment(node, SHELL_ENV)["VOICE_DRAIN_SECONDS"])
        assert service["stop_signal"] == "SIGTERM"
        assert _seconds(service["stop_grace_period"]) > drain + SERVER_CLOSE_SECONDS


def test_compose_gives_each_node_its_own_public_url_on_its_own_published_port() -> None:
    """The mint's `server` must reach the node holding the agent: one URL and one port per node."""
    urls, ids = set(), set()
    for node in NODES:
        env = compose_environment(node, SHELL_ENV)
        url = env["VOICE_PUBLIC_URL"]
        (published,) = compose()["services"][node]["ports"]
        host_port = published.rsplit(":", 2)[-2]
        assert url.endswith(f":{host_port}"), f"{node}: {url} is not its published port {published}"
        urls.add(url)
        ids.add(env["VOICE_NODE_ID"])
    assert len(urls) == len(ids) == len(NODES)
    lb_port = compose()["services"]["lb"]["ports"][0].rsplit(":", 2)[-2]
    assert all(not url.endswith(f":{lb_port}") for url in urls), "a node URL points at the LB"


def test_compose_nodes_trust_exactly_the_load_balancer() -> None:
    doc = compose()
    lb_address = ipaddress.ip_address(doc["services"]["lb"]["networks"]["default"]["ipv4_address"])
    subnet = ipaddress.ip_network(doc["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert lb_address in subnet
    for node in NODES:
        settings = Settings.from_env(compose_environment(node, SHELL_ENV))
        assert settings.trusted_proxies == (ipaddress.ip_network(f"{lb_address}/32"),)


def test_compose_node_environment_is_accepted_by_the_server_settings() -> None:
    for port, node in zip((8081, 8082), NODES, strict=True):
        settings = Settings.from_env(compose_environment(node, SHELL_ENV))
        assert not settings.dev
        assert settings.host == "0.0.0.0" and settings.port == 8080
        assert settings.node_id == node
        assert settings.public_url == f"http://localhost:{port}"
        assert settings.store_url == "redis://redis:6379/0"
        assert settings.token_secrets == (TEST_TOKEN_SECRET,)


def test_compose_refuses_to_start_without_a_token_secret() -> None:
    with pytest.raises(LookupError, match="VOICE_TOKEN_SECRET"):
        compose_environment("node-a", {})


# -- load balancer ---------------------------------------------------------------------------
def _haproxy_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in HAPROXY.read_text().splitlines():
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        if not line[0].isspace():
            current = stripped
            sections[current] = []
        else:
            sections[current].append(" ".join(stripped.split()))
    return sections


def test_load_balancer_sends_websocket_upgrades_for_client_and_chat_ws_to_long_lived_tunnels() -> None:
    sections = _haproxy_sections()
    frontend = sections["frontend public"]
    assert "acl websocket_path path /client /chat/ws" in frontend
    assert "acl websocket_upgrade hdr(upgrade) -i websocket" in frontend
    assert "use_backend websockets if websocket_path websocket_upgrade" in frontend
    (tunnel,) = [line for line in sections["defaults"] if line.startswith("timeout tunnel ")]
    assert _seconds(tunnel.split()[-1]) >= 3600
    assert "mode http" in sections["defaults"]  # HTTP mode forwards Upgrade/Connection as sent


def test_load_balancer_overwrites_x_forwarded_for_with_the_peer() -> None:
    assert "http-request set-header X-Forwarded-For %[src]" in _haproxy_sections()["frontend public"]


def test_load_balancer_checks_readyz_on_every_compose_node() -> None:
    sections = _haproxy_sections()
    for backend in ("backend websockets", "backend http_nodes"):
        lines = sections[backend]
        assert any(line.startswith("http-check send meth GET uri /readyz") for line in lines)
        assert "http-check expect status 200" in lines
        servers = [line.split()[1:3] for line in lines if line.startswith("server ")]
        assert servers == [[node, f"{node}:8080"] for node in NODES]
        assert not any("shutdown-sessions" in line for line in lines), "a drain must keep live sockets"


def test_haproxy_accepts_the_config() -> None:
    haproxy = Path("/usr/sbin/haproxy")
    if not haproxy.exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy); the structural checks still ran")
    result = subprocess.run(
        [str(haproxy), "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line]
    # The node names resolve only inside the compose network; any other warning is a defect.
    assert all("could not resolve address" in line for line in warnings), warnings


# -- kubernetes ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: p.name)
def test_k8s_manifest_validates_strictly_against_the_kubernetes_schema(path: Path) -> None:
    for doc in k8s_documents():
        if doc[0] == path:
            kubernetes_validate.validate(doc[1], kubernetes_validate.latest_version(), strict=True)


def test_k8s_manifests_are_namespace_agnostic_and_complete() -> None:
    kinds = sorted(doc["kind"] for _, doc in k8s_documents())
    assert {"ConfigMap", "Secret", "StatefulSet", "Service", "PodDisruptionBudget", "Ingress"} <= set(kinds)
    assert all("namespace" not in doc["metadata"] for _, doc in k8s_documents())


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s_object("StatefulSet")["spec"]["template"]["spec"]
    return spec


def test_statefulset_probes_readyz_and_healthz_and_drains_before_sigkill() -> None:
    spec = _pod_spec()
    (container,) = spec["containers"]
    assert k8s_object("StatefulSet")["spec"]["replicas"] >= 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 1 <= pre_stop <= 15
    drain = float(k8s_object("ConfigMap")["data"]["VOICE_DRAIN_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain + SERVER_CLOSE_SECONDS


def test_statefulset_runs_non_root_on_a_read_only_root_with_a_writable_tmp() -> None:
    spec = _pod_spec()
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert spec["enableServiceLinks"] is False  # or a Service named voice* would set VOICE_PORT
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    (mount,) = container["volumeMounts"]
    (volume,) = spec["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/tmp"} and "emptyDir" in volume
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_each_pod_has_its_own_service_ingress_host_and_public_url() -> None:
    """StatefulSet pod voice-<i> advertises https://voice-<i>.<domain>, and that host reaches it alone."""
    statefulset = k8s_object("StatefulSet")
    name = statefulset["metadata"]["name"]
    domain = k8s_object("ConfigMap")["data"]["PUBLIC_NODE_DOMAIN"]
    ingress_routes = {
        rule["host"]: rule["http"]["paths"][0]["backend"]["service"]["name"]
        for rule in k8s_object("Ingress")["spec"]["rules"]
    }
    for index in range(statefulset["spec"]["replicas"]):
        pod = f"{name}-{index}"
        env = k8s_pod_environment(pod, {"VOICE_TOKEN_SECRET": TEST_TOKEN_SECRET})
        assert env["VOICE_NODE_ID"] == pod
        assert env["VOICE_PUBLIC_URL"] == f"https://{pod}.{domain}"
        service = k8s_object("Service", pod)
        assert service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == pod
        assert ingress_routes[f"{pod}.{domain}"] == pod
    shared = k8s_object("Service", "voice-server")
    assert ingress_routes[domain] == "voice-server"
    assert k8s_object("Service", statefulset["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    assert shared["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]


def test_ingress_keeps_idle_websockets_open_for_an_hour() -> None:
    annotations = k8s_object("Ingress")["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600


def test_pod_disruption_budget_keeps_one_pod_of_the_statefulset() -> None:
    pdb = k8s_object("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    labels = k8s_object("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_pod_environment_is_accepted_by_the_server_settings() -> None:
    env = k8s_pod_environment("voice-1", {"VOICE_TOKEN_SECRET": TEST_TOKEN_SECRET})
    settings = Settings.from_env(env, host="0.0.0.0", port=8080)  # the container's args
    assert not settings.dev
    assert settings.node_id == "voice-1"
    assert settings.public_url == "https://voice-1.voice.example.com"
    assert settings.store_url.startswith("redis://")
    assert settings.drain_seconds == 20
    assert settings.trusted_proxies


def test_k8s_secret_ships_no_token_secret_so_an_unedited_deploy_refuses_to_start() -> None:
    assert k8s_object("Secret")["stringData"]["VOICE_TOKEN_SECRET"] == ""
    with pytest.raises(SettingsError, match="VOICE_TOKEN_SECRET"):
        Settings.from_env(k8s_pod_environment("voice-0", {}))


def test_applying_the_folder_never_touches_the_secret() -> None:
    """Issue 14 item 8: `kubectl apply -f deploy/k8s/` applied the placeholder Secret over the
    operator's. kubectl reads a folder's files without recursing: no Secret may be among them."""
    applied = [doc["kind"] for _, doc in k8s_documents(templates=False)]
    assert "Secret" not in applied and "StatefulSet" in applied
    assert k8s_object("Secret")["metadata"]["name"] == "voice-secrets"  # the template still exists
    hint = (DEPLOY / "README.md").read_text()
    assert "kubectl apply -n voice -f deploy/k8s/\n" in hint
