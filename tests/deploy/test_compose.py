"""deploy/compose.yaml and its nginx.conf, read for the structure the README promises: the
services, what waits for what, health checks, volumes, and no secret written down."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, is_setting

COMPOSE = DEPLOY / "compose.yaml"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")
REQUIRED_VARIABLE = re.compile(r"\$\{\w+:\?[^}]*\}")
ANY_VARIABLE = re.compile(r"\$\{[^}]+\}")


def problems(compose: dict[str, Any], nginx_conf: str) -> list[str]:
    """What keeps this compose file from being the stack deploy/README.md describes."""
    found: list[str] = []
    services: dict[str, Any] = compose.get("services", {})
    apis = sorted(n for n, s in services.items() if s.get("command", [None])[0] == "serve")
    roles = {
        "postgres": "postgres" in services,
        "redis": "redis" in services,
        "a one-shot migration": any(s.get("command") == ["migrate"] for s in services.values()),
        "two API replicas": len(apis) >= 2,
        "the worker": any(s.get("command") == ["worker"] for s in services.values()),
        "a reverse proxy": "proxy" in services,
    }
    found += [f"no {role}" for role, present in roles.items() if not present]
    migrate = next((n for n, s in services.items() if s.get("command") == ["migrate"]), None)

    for name, service in services.items():
        waits = service.get("depends_on", {})
        if not isinstance(waits, dict):
            found.append(f"{name}: depends_on without conditions")
            continue
        for other, how in waits.items():
            wanted = "service_completed_successfully" if other == migrate else "service_healthy"
            if how.get("condition") != wanted:
                found.append(f"{name} waits for {other} with {how.get('condition')}, not {wanted}")
            elif wanted == "service_healthy" and not _has_healthcheck(services.get(other, {})):
                found.append(f"{name} waits for {other} to be healthy, but it has no health check")
        command = service.get("command", [None])
        if command[0] in {"serve", "worker"} and migrate not in waits:
            found.append(f"{name} starts without waiting for the migration")
        if command == ["migrate"] and service.get("restart") not in {"no", None}:
            found.append(f"{name} restarts: a one-shot job must not")
        for variable, value in (service.get("environment") or {}).items():
            text = str(value)
            if variable.startswith("REGULARS_") and not is_setting(variable):
                found.append(f"{name}: {variable} is not a setting; the server refuses it")
            secret_in_url = re.search(r"://[^/@]*:([^@/]+)@", text)
            if SECRET_NAME.search(variable) or secret_in_url:
                literal = ANY_VARIABLE.sub("", secret_in_url[1] if secret_in_url else text)
                if literal or not REQUIRED_VARIABLE.search(text):
                    found.append(f"{name}: {variable} is not a required ${{VAR:?}} variable")
        found += [
            f"{name} builds secrets in: {arg}"
            for arg in (service.get("build") or {}).get("args", {})
            if SECRET_NAME.search(arg)
        ]

    volumes = set(compose.get("volumes") or {})
    for name in ("postgres", "redis"):
        mounts = [str(v).split(":")[0] for v in services.get(name, {}).get("volumes", [])]
        if not set(mounts) & volumes:
            found.append(f"{name} keeps its data in no named volume")
    upstreams = set(re.findall(r"^\s*server\s+([\w-]+):8000\b", nginx_conf, re.MULTILINE))
    if upstreams != set(apis):
        found.append(f"nginx sends to {sorted(upstreams)}, the API replicas are {apis}")
    return found


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    # A service of our image inherits the Dockerfile's HEALTHCHECK; others must declare one.
    return bool(check and not check.get("disable"))


@pytest.fixture
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture
def nginx_conf() -> str:
    return (DEPLOY / "nginx.conf").read_text()


def test_the_stack_is_wired_as_described(compose: dict[str, Any], nginx_conf: str) -> None:
    assert problems(compose, nginx_conf) == []
    assert {"pgdata", "redisdata"} <= set(compose["volumes"])
    # The API's health check is its readiness: the proxy starts once PostgreSQL answers.
    api = compose["services"]["api-1"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_no_secret_is_committed() -> None:
    text = COMPOSE.read_text()
    secrets = (
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "REGULARS_JWT_SECRET",
        "REGULARS_POS_SEAL_KEY",
    )
    for variable in secrets:
        uses = re.findall(r"\$\{" + variable + r"(:?[?-])?[^}]*\}", text)
        assert uses and all(mark == ":?" for mark in uses), variable
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert ".env" in ignored
    example = (DEPLOY / "env.example").read_text()
    assert re.findall(r"^(\w+)=(.*)$", example, re.MULTILINE) == [
        ("POSTGRES_PASSWORD", ""),
        ("REDIS_PASSWORD", ""),
        ("REGULARS_JWT_SECRET", ""),
        ("REGULARS_POS_SEAL_KEY", ""),
    ]


def _break(compose: dict[str, Any], how: str) -> None:
    services = compose["services"]
    if how == "one API":
        del services["api-2"]
    elif how == "migrate only started":
        services["worker"]["depends_on"]["migrate"] = {"condition": "service_started"}
    elif how == "literal JWT secret":
        services["worker"]["environment"] = {
            **services["worker"]["environment"],
            "REGULARS_JWT_SECRET": "change-me",
        }
    elif how == "password in URL":
        services["worker"]["environment"] = {
            **services["worker"]["environment"],
            "REGULARS_DATABASE_URL": "postgresql://regulars:regulars@postgres/regulars",
        }
    elif how == "unknown setting":
        services["worker"]["environment"] = {"REGULARS_DB_POOL": "5"}
    elif how == "postgres without a volume":
        services["postgres"]["volumes"] = ["/tmp/pg:/var/lib/postgresql/data"]
    elif how == "redis not healthy":
        del services["redis"]["healthcheck"]
    elif how == "no worker":
        del services["worker"]


@pytest.mark.parametrize(
    "how",
    [
        "one API",
        "migrate only started",
        "literal JWT secret",
        "password in URL",
        "unknown setting",
        "postgres without a volume",
        "redis not healthy",
        "no worker",
    ],
)
def test_a_broken_stack_is_caught(compose: dict[str, Any], nginx_conf: str, how: str) -> None:
    _break(compose, how)
    assert problems(compose, nginx_conf) != []
