"""deploy/Dockerfile, read as its instructions: no Docker engine runs where the tests do, so
the image is never built here; what it is made of is checked instead."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest

from tests.deploy.helpers import DEPLOY, is_setting, locked_version

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        return found[-1] if found else ""


def parse(text: str) -> list[Stage]:
    """The build stages, each with its instructions (keyword, arguments), continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        raise ValueError("the Dockerfile ends inside a continued line")
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            if not match:
                raise ValueError(f"cannot read FROM {args}")
            stages.append(Stage(base=match[1], name=match[2]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except ValueError:
        return []
    return [str(part) for part in value] if isinstance(value, list) else []


def problems(text: str) -> list[str]:
    """What keeps this Dockerfile from being the image deploy/README.md promises."""
    found: list[str] = []
    stages = parse(text)
    if len(stages) < 2:
        return ["not multi-stage"]
    build, runtime = stages[0], stages[-1]
    bases = {stage.base for stage in stages}
    # One base for all: the virtual environment's interpreter link must still resolve.
    if len(bases) != 1 or not re.fullmatch(
        r"python:3\.1[12]-slim(-\w+)?(@sha256:[0-9a-f]{64})?", next(iter(bases))
    ):
        found.append(f"bases {sorted(bases)} are not one slim CPython 3.11/3.12")
    if not all(c.startswith("--from=") for c in runtime.all("COPY")):
        found.append("the runtime stage copies from the context, not only from the build")

    if not any("uv.lock" in c.split() for c in build.all("COPY")):
        found.append("uv.lock is not copied")
    syncs = [r for r in build.all("RUN") if "uv sync" in r]
    if not syncs or not all("--locked" in r and "--no-editable" in r for r in syncs):
        found.append("not installed with `uv sync --locked --no-editable`")
    if any("--extra" in r or "--all-extras" in r for r in build.all("RUN")):
        found.append("an extra (kiosk, dev, load) is installed")
    copied = " ".join(build.all("COPY")).split()
    if "kiosk" in copied or "loadtests" in copied:
        found.append("the kiosk or the load tests are copied")
    uv_args = dict(a.split("=", 1) for a in build.all("ARG") if "=" in a)
    if uv_args.get("UV_VERSION") != locked_version("uv"):
        found.append(f"UV_VERSION {uv_args.get('UV_VERSION')} is not uv.lock's")

    name, _, group = runtime.last("USER").partition(":")
    if not name or name in {"root", "0"} or group in {"root", "0"}:
        found.append(f"runs as {runtime.last('USER') or 'root'}")
    elif not name.isdigit():
        found.append("USER is not numeric: Kubernetes cannot check runAsNonRoot")

    argv = exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD"))
    if argv[:2] != ["regulars", "serve"]:
        found.append(f"starts {argv[:2]}, not `regulars serve`")
    options, _, probe = runtime.last("HEALTHCHECK").partition("CMD ")
    probe_argv = exec_form(probe)
    if not probe_argv or probe_argv[0] != "python" or "/healthz" not in probe_argv[-1]:
        found.append("no health check of /healthz with python (a slim image has no curl)")
    elif "--interval=" not in options or "--timeout=" not in options:
        found.append("the health check has no interval or timeout")
    else:
        compile(probe_argv[-1], "<healthcheck>", "exec")

    for keyword, args in (i for stage in stages for i in stage.instructions):
        if keyword not in {"ENV", "ARG"}:
            continue
        if re.search(r"(SECRET|PASSWORD|TOKEN|_URL)\w*=", args):
            found.append(f"a secret or URL is baked in: {keyword} {args}")
        found += [
            f"{n} is not a setting"
            for n in re.findall(r"\b(REGULARS_\w+)=", args)
            if not is_setting(n)
        ]
    return found


def test_the_image_is_built_as_promised() -> None:
    assert problems(DOCKERFILE.read_text()) == []


def test_only_the_server_is_sent_to_the_build() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    assert {"!server/", "!shared/", "!uv.lock", "!pyproject.toml"} <= set(ignore)
    assert not any(entry.startswith(("!kiosk", "!loadtests", "!.venv")) for entry in ignore)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("USER 10001:10001", "USER root"), "runs as root"),
        (("USER 10001:10001", "# no user"), "runs as root"),
        (("--locked --no-dev --no-editable \\", "--no-dev --no-editable \\"), "uv sync --locked"),
        (("COPY shared shared", "COPY shared shared\nCOPY kiosk kiosk"), "kiosk"),
        (("--no-install-project", "--no-install-project --extra kiosk"), "an extra"),
        (('CMD ["serve"', 'CMD ["worker"'), "not `regulars serve`"),
        (("8000/healthz", "8000/nowhere"), "no health check"),
        (("REGULARS_ENV=prod", "REGULARS_ENV=prod REGULARS_JWT_SECRET=hunter2"), "baked in"),
        (("REGULARS_ENV=prod", "REGULARS_ENVIRONMENT=prod"), "is not a setting"),
        (("FROM python:3.11-slim-bookworm AS runtime", "FROM python:3.11 AS runtime"), "bases"),
        (("ARG UV_VERSION=", "ARG UV_VERSION=0.0.1"), "UV_VERSION"),
    ],
)
def test_a_broken_dockerfile_is_caught(change: tuple[str, str], complaint: str) -> None:
    original = DOCKERFILE.read_text()
    old, new = change
    assert old in original, "the test's anchor moved: update the change"
    broken = original.replace(old, new, 1)
    assert any(complaint in problem for problem in problems(broken)), problems(broken)
