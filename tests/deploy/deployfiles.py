"""Readers for the files in deploy/: YAML documents, compose interpolation, env files, the
Dockerfile's instructions, and the VOICE_* names that server/settings.py actually reads."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# Outside what `kubectl apply -f deploy/k8s/` applies (it does not recurse): applying the folder
# must never overwrite the operator's Secret with the placeholder.
K8S_TEMPLATES = K8S / "templates"
COMPOSE = DEPLOY / "compose.yaml"
HAPROXY = DEPLOY / "haproxy.cfg"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
UNIT = DEPLOY / "systemd" / "voice-server.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "env.example"
# What a test puts where an operator must put a real secret (the files ship none).
TEST_TOKEN_SECRET = "test-secret-0123456789abcdef0123456789"

VOICE_NAME = re.compile(r"\bVOICE_[A-Z0-9_]*[A-Z0-9]\b")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_K8S_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def setting_names() -> set[str]:
    """Every ``"VOICE_..."`` string literal in server/settings.py: the variables it reads."""
    source = (ROOT / "server" / "settings.py").read_text()
    return set(re.findall(r"\"(VOICE_[A-Z0-9_]+)\"", source))


def deploy_files() -> Iterator[Path]:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(COMPOSE)
    return doc


def k8s_documents(templates: bool = True) -> list[tuple[Path, dict[str, Any]]]:
    """The manifests ``kubectl apply -f deploy/k8s/`` applies, and (``templates``) the Secret
    template the operator fills in and creates out of band."""
    paths = sorted(K8S.glob("*.yaml")) + (sorted(K8S_TEMPLATES.glob("*.yaml")) if templates else [])
    return [(path, doc) for path in paths for doc in load_yaml(path)]


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in k8s_documents()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (the forms compose.yaml uses)."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        unset = current is None or (operator is not None and operator.startswith(":") and current == "")
        if not unset:
            return str(current)
        if operator in ("-", ":-"):
            return argument or ""
        if operator in ("?", ":?"):
            raise LookupError(f"{name}: {argument}")
        return ""

    return _INTERPOLATION.sub(replace, value)


def compose_environment(service: str, env: Mapping[str, str]) -> dict[str, str]:
    """A compose service's container environment after interpolation with the shell's ``env``."""
    raw = compose()["services"][service].get("environment", {})
    assert isinstance(raw, dict), "compose environments are written as mappings"
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def k8s_pod_environment(pod_name: str, secrets: Mapping[str, str]) -> dict[str, str]:
    """The container environment of StatefulSet pod ``pod_name``: envFrom (ConfigMap, then the
    Secret with ``secrets`` filled in for the placeholders), then ``env`` with ``$(VAR)`` expanded
    from what came before, as the kubelet does."""
    statefulset = k8s_object("StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = k8s_object("ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            data = {**k8s_object("Secret", source["secretRef"]["name"])["stringData"], **secrets}
        environment.update({key: str(value) for key, value in data.items()})
    for entry in container.get("env", []):
        if "value" in entry:
            value = _K8S_REFERENCE.sub(lambda m: environment.get(m.group(1), m.group(0)), entry["value"])
        elif entry["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            value = pod_name
        elif "configMapKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["configMapKeyRef"]
            value = str(k8s_object("ConfigMap", ref["name"])["data"][ref["key"]])
        else:
            raise AssertionError(f"unhandled env source in the StatefulSet: {entry}")
        environment[entry["name"]] = value
    return environment


def parse_env_file(path: Path) -> dict[str, str]:
    """``VAR=value`` lines as systemd's EnvironmentFile reads them (comments and blanks skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        assert sep, f"{path.name}: not VAR=value: {line!r}"
        values[name.strip()] = value.strip()
    return values


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        pending += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def systemd_directives(path: Path = UNIT) -> dict[str, list[str]]:
    """``Key=value`` directives of a unit file, every section merged, repeated keys kept in order."""
    directives: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";", "[")):
            continue
        key, _, value = stripped.partition("=")
        directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def dockerignore_allows(relative: str, path: Path = DOCKERIGNORE) -> bool:
    """Whether ``relative`` (a path in the build context) is sent, by .dockerignore rules: the last
    matching pattern wins, ``!`` re-includes, a directory pattern covers what is under it."""
    allowed = True
    for line in path.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.replace("**/", "")]
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates) or any(
            fnmatch.fnmatchcase(part, pattern.replace("**/", "")) for part in parts if "**/" in pattern
        ):
            allowed = negate
    return allowed
