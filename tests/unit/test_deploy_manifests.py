"""deploy/ checked without a cluster: every manifest parses; Kubernetes objects validate
against the Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors) and
KEDA's objects against KEDA's schema; names that refer to each other exist; the secrets the
manifests mount are the files `gristmill deploy files` writes; and the compose file passes
`docker compose config` where docker exists, and a structural check everywhere."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gristmill.deploy import write_deploy_files
from gristmill.teams import TeamsConfig

DEPLOY = Path(__file__).parents[2] / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S_VERSION = "1.32.0"


def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def _objects() -> list[dict[str, Any]]:
    objects = []
    for name in _kustomization()["resources"]:
        objects += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return objects


def _named(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in _objects() if o["kind"] == kind}


def _keda_schemas() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "schemas" / "keda-v1alpha1.yaml").read_text())
    return loaded


def _keda_errors(obj: dict[str, Any]) -> list[str]:
    schemas = _keda_schemas()
    schema = {**schemas[obj["kind"]], "definitions": schemas["definitions"]}
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj))


def _k8s_errors(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(map(str, exc.path))}: {exc.message}"
    return None


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "teams.yaml"}
    assert listed == on_disk


def test_every_kubernetes_object_validates_against_its_schema() -> None:
    objects = [o for o in _objects() if not o["apiVersion"].startswith("keda.sh/")]
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "PodDisruptionBudget", "Service", "StatefulSet"]  # fmt: skip
    assert {o["metadata"]["name"]: _k8s_errors(o) for o in objects} == {o["metadata"]["name"]: None for o in objects}  # fmt: skip


def test_the_kubernetes_check_catches_an_unknown_field() -> None:
    deployment = copy.deepcopy(_named("Deployment")["gristmill-planner"])
    deployment["spec"]["replicass"] = 2
    assert _k8s_errors(deployment) is not None
    deployment = copy.deepcopy(_named("Deployment")["gristmill-planner"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = []
    assert _k8s_errors(deployment) is not None


def test_the_keda_objects_validate_against_kedas_schema() -> None:
    keda = [o for o in _objects() if o["apiVersion"].startswith("keda.sh/")]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in keda) == [
        ("ScaledObject", "gristmill-worker-cpu"),
        ("ScaledObject", "gristmill-worker-gpu"),
        ("TriggerAuthentication", "gristmill-operator"),
    ]
    assert {o["metadata"]["name"]: _keda_errors(o) for o in keda} == {o["metadata"]["name"]: [] for o in keda}  # fmt: skip
    broken = copy.deepcopy(_named("ScaledObject")["gristmill-worker-cpu"])
    broken["spec"]["maxReplicas"] = 3
    broken["spec"]["triggers"][0]["metadata"]["targetValue"] = 1
    assert _keda_errors(broken) == [
        "spec.triggers.0.metadata.targetValue: 1 is not of type 'string'",
        "spec: Additional properties are not allowed ('maxReplicas' was unexpected)",
    ]


def test_each_worker_pool_scales_on_the_coordinators_decision_for_it() -> None:
    deployments = _named("Deployment")
    auth = _named("TriggerAuthentication")
    service = _named("Service")["gristmill-coordinator"]
    port = service["spec"]["ports"][0]["port"]
    env = _named("ConfigMap")["gristmill-env"]["data"]
    assert env["GRISTMILL_SCALER"] == "none"  # KEDA scales; the coordinator only decides
    for pool, prefix in (("cpu", ""), ("gpu", "GPU_")):
        scaled = _named("ScaledObject")[f"gristmill-worker-{pool}"]
        # the coordinator decides only for pools with bounds; KEDA's range is the same
        assert env[f"GRISTMILL_{prefix}MIN_WORKERS"] == str(scaled["spec"]["minReplicaCount"])
        assert env[f"GRISTMILL_{prefix}MAX_WORKERS"] == str(scaled["spec"]["maxReplicaCount"])
        target = scaled["spec"]["scaleTargetRef"]["name"]
        assert target in deployments
        assert (
            deployments[target]["spec"]["template"]["metadata"]["labels"]["gristmill.io/pool"]
            == pool
        )
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["type"] == "metrics-api"
        assert trigger["metadata"] == {
            "url": f"http://gristmill-coordinator.gristmill.svc:{port}/api/workers",
            "valueLocation": f"decisions.0.workers.{pool}",  # ScalingDecision.workers[pool]
            "targetValue": "1",
            "authMode": "bearer",
        }
        refs = auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
        assert refs == [{"parameter": "token", "name": "gristmill-operator-token", "key": "token"}]


def _pod_specs() -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in _objects()
        if o["kind"] in ("Deployment", "StatefulSet")
    }


def test_every_container_has_probes_resources_and_no_root() -> None:
    for name, pod in _pod_specs().items():
        for container in pod["containers"]:
            assert {"livenessProbe", "readinessProbe", "resources"} <= set(container), name
            assert container["resources"]["requests"], name
        if name != "nats":
            assert pod["securityContext"]["runAsNonRoot"] is True, name
    gpu = _pod_specs()["gristmill-worker-gpu"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1
    cpu = _pod_specs()["gristmill-worker-cpu"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"]


def test_the_pods_mount_exactly_what_the_kustomization_generates(tmp_path: Path) -> None:
    kustomization = _kustomization()
    secrets = {g["name"]: g["files"] for g in kustomization["secretGenerator"]}
    config_maps = {g["name"] for g in kustomization["configMapGenerator"]} | set(
        _named("ConfigMap")
    )
    for name, pod in _pod_specs().items():
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (name, volume)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
    teams = TeamsConfig.load(str(K8S / "teams.yaml"))
    written = write_deploy_files(
        tmp_path / "secrets", teams, tmp_path / "creds", 3, "nats-{i}.nats"
    )
    wanted = {
        f.split("=")[-1].removeprefix("secrets/") for files in secrets.values() for f in files
    }
    assert wanted == {p.name for p in written}


def test_the_services_find_every_nats_server_and_keep_three_copies() -> None:
    env = _named("ConfigMap")["gristmill-env"]["data"]
    nats = _named("StatefulSet")["nats"]
    size = nats["spec"]["replicas"]
    assert env["GRISTMILL_NATS_URL"].split(",") == [
        f"nats://nats-{i}.nats:4222" for i in range(size)
    ]
    assert env["GRISTMILL_REPLICAS"] == "3" == str(size)
    assert env["GRISTMILL_STORE"].startswith("s3://")
    assert _named("PodDisruptionBudget")["nats"]["spec"]["maxUnavailable"] == 1
    command = nats["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "nats-$(( ${HOSTNAME##*-} + 1 )).conf" in command  # pod nats-0 takes nats-1.conf


def _compose_env(tmp_path: Path) -> dict[str, str]:
    teams = TeamsConfig.load(str(DEPLOY / "compose" / "teams.yaml"))
    write_deploy_files(tmp_path / "secrets", teams, tmp_path / "creds", 3, "nats-{n}")
    return {"GRISTMILL_DEPLOY_FILES": str(tmp_path / "secrets"), "MINIO_ROOT_PASSWORD": "test-password-123"}  # fmt: skip


def _substitute(text: str, env: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name, _, default = match.group(1).partition(":-")
        name = name.split(":?")[0]
        return env.get(name, default)

    return re.sub(r"\$\{([^}]+)\}", value, text)


def test_the_compose_file_hangs_together(tmp_path: Path) -> None:
    env = _compose_env(tmp_path)
    compose = yaml.safe_load(_substitute(COMPOSE.read_text(), env))
    services = compose["services"]
    assert {"nats-1", "nats-2", "nats-3", "planner", "coordinator", "worker-cpu", "worker-gpu", "otel-collector", "jaeger", "minio"} <= set(services)  # fmt: skip
    for name, service in services.items():
        assert "image" in service, name
        for ref in service.get("secrets", []):
            assert ref["source"] in compose["secrets"], (name, ref)
        for ref in service.get("configs", []):
            assert ref["source"] in compose["configs"], (name, ref)
        for needed in service.get("depends_on", {}):
            assert needed in services, (name, needed)
    for kind in ("secrets", "configs"):
        for name, entry in compose[kind].items():
            assert (COMPOSE.parent / entry["file"]).is_file(), (kind, name, entry["file"])
    url = services["planner"]["environment"]["GRISTMILL_NATS_URL"]
    assert url.split(",") == [f"nats://nats-{n}:4222" for n in (1, 2, 3)]
    assert services["planner"]["environment"]["GRISTMILL_REPLICAS"] == "3"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in ("planner", "coordinator", "worker-cpu", "worker-gpu"):
        creds = services[name]["environment"]["GRISTMILL_CREDENTIALS"]
        assert creds.removeprefix("/run/secrets/") in {
            s["target"] for s in services[name]["secrets"]
        }


def _docker_compose() -> bool:
    """Whether `docker compose` (the v2 plugin) runs here."""
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not _docker_compose(), reason="no `docker compose` here: test_the_compose_file_hangs_together checks its structure")  # fmt: skip
def test_docker_compose_accepts_the_compose_file(tmp_path: Path) -> None:
    env = {**os.environ, **_compose_env(tmp_path)}
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
