"""Readers for the deployment files: Dockerfiles, .dockerignore, env files, YAML, and the
app's real health routes (so probes are checked against the code, not a copy of it)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from app.api.v1.public import health
from app.main import create_app
from tests.support import ROOT, env_example_names, make_settings

DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
SCRIPTS = ROOT / "scripts"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    def expand(self, text: str) -> str:
        """Substitute ${ARG} / $ARG with the defaults the file declares."""
        values = dict(self.args)
        for stage in self.stages:
            for declared in stage.all("ARG"):
                name, _, default = declared.partition("=")
                values[name] = default or values.get(name, "")
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    return lines


def parse_dockerfile(path: Path) -> Dockerfile:
    result = Dockerfile(args={}, stages=[])
    for line in _logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            result.stages.append(Stage(base=parts[0], name=name))
        elif not result.stages and keyword == "ARG":
            name, _, default = args.partition("=")
            result.args[name] = default
        else:
            result.stages[-1].instructions.append((keyword, args))
    return result


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD written as a JSON array (so signals reach it)."""
    command = json.loads(args)
    assert isinstance(command, list), f"not exec form: {args}"
    return [str(part) for part in command]


def env_names(args: str) -> list[str]:
    """Names set by one ENV instruction (`A=1 B="x y"`)."""
    return re.findall(r'(?:^|\s)([A-Za-z_]\w*)=(?:"[^"]*"|\S*)', args)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for segment in pattern.strip("/").split("/"):
        if segment == "**":
            parts.append("(?:[^/]+/)*")
            continue
        translated = re.escape(segment).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        translated = re.sub(r"\\\[(.*?)\\\]", r"[\1]", translated)
        parts.append(translated + "/")
    # A pattern that matches a directory excludes everything below it.
    return re.compile("^" + "".join(parts).removesuffix("/") + "(?:/.*)?$")


def is_dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!pattern` re-includes."""
    ignored = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        if _pattern_regex(pattern.lstrip("!")).match(path):
            ignored = not negated
    return ignored


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def documented_env_names() -> set[str]:
    settings, infrastructure = env_example_names()
    return set(settings) | set(infrastructure)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def project_slug() -> str:
    slug: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    return slug


def health_paths(api_prefix: str = "/api/v1") -> tuple[str, str]:
    """(liveness, readiness) as the app actually routes them under `api_prefix`."""
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:", API_V1_STR=api_prefix))
    names = (health.liveness.__name__, health.readiness.__name__)
    return app.url_path_for(names[0]), app.url_path_for(names[1])


def compose_value(value: object, environment: dict[str, str] | None = None) -> object:
    """A compose value with `${NAME:-default}` substituted as compose would, from
    `environment` (the shell's, for `docker compose up`)."""
    if not isinstance(value, str):
        return value
    environment = environment or {}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: environment.get(m[1]) or m[2], value)


def compose_environment(
    spec: dict[str, Any], environment: dict[str, str] | None = None
) -> dict[str, Any]:
    """A compose service's `environment`, substituted (see `compose_value`)."""
    return {
        name: compose_value(value, environment)
        for name, value in spec.get("environment", {}).items()
    }
