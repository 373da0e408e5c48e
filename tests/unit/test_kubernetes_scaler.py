"""KubernetesScaler: the real `kubernetes` client against a fake API server on 127.0.0.1 that
answers the Deployment `scale` subresource with the bodies in fixtures/kubernetes_scale.json
and records every request it gets."""

from __future__ import annotations

import copy
import json
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from gristmill.errors import GristmillError
from services.coordinator.scaling.kubernetes_scaler import (
    KubernetesScaler,
    ReplicaChange,
    kubernetes_scaler_from_env,
)
from services.coordinator.scaling.policy import Decision
from services.coordinator.scaling.scalers import scaler_from_env

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "kubernetes_scale.json").read_text())
NAMESPACE = "gristmill"
CPU, GPU = "gristmill-worker-cpu", "gristmill-worker-gpu"
DEPLOYMENTS = {"cpu": CPU, "gpu": GPU}
SCALE_PATH = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"


@dataclass(frozen=True)
class Request:
    """One request the fake API server got."""

    method: str
    path: str
    content_type: str | None
    body: Any
    authorization: str | None = None


class FakeApiServer:
    """GET and PATCH of deployments/{name}/scale in one namespace, answered from the recorded
    bodies: a PATCH merges its `spec.replicas` in and bumps the resourceVersion, as the API
    server does; a Deployment it does not hold is the recorded 404, one in `forbidden` the
    recorded 403; with a `token` set, a request without it the recorded 401."""

    def __init__(self) -> None:
        self.scales: dict[str, dict[str, Any]] = copy.deepcopy(RECORDED["scales"])
        self.forbidden: set[str] = set()
        self.token: str | None = None  # set: other bearer tokens are refused (401)
        self.requests: list[Request] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.answer(self)

            def do_PATCH(self) -> None:
                fake.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        self.requests.append(
            Request(
                handler.command,
                handler.path,
                handler.headers.get("Content-Type"),
                json.loads(raw) if raw else None,
                handler.headers.get("Authorization"),
            )
        )
        name = self.deployment(handler.path)
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            self.send(handler, 401, RECORDED["unauthorized"])
        elif name in self.forbidden:
            self.send(handler, 403, RECORDED["forbidden"])
        elif name is None or name not in self.scales:
            self.send(handler, 404, RECORDED["not_found"])
        else:
            scale = self.scales[name]
            if handler.command == "PATCH":
                scale["spec"]["replicas"] = json.loads(raw)["spec"]["replicas"]
                version = int(scale["metadata"]["resourceVersion"]) + 1
                scale["metadata"]["resourceVersion"] = str(version)
            answer = copy.deepcopy(scale)
            if not answer["spec"].get("replicas"):
                del answer["spec"]["replicas"]  # ScaleSpec.replicas is omitempty
            self.send(handler, 200, answer)

    def deployment(self, path: str) -> str | None:
        prefix = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/"
        if not path.startswith(prefix) or not path.endswith("/scale"):
            return None
        return path[len(prefix) : -len("/scale")]

    def send(self, handler: BaseHTTPRequestHandler, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def replicas(self, name: str) -> int:
        return int(self.scales[name]["spec"]["replicas"])


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join()


def apps_api(url: str) -> Any:
    configuration = kubernetes.client.Configuration(host=url)
    return kubernetes.client.AppsV1Api(kubernetes.client.ApiClient(configuration))


def decision(**workers: int) -> Decision:
    return Decision(at=0.0, workers=workers, slots={}, remove={}, gpus={}, reasons=())


def get(name: str) -> Request:
    return Request("GET", SCALE_PATH.format(namespace=NAMESPACE, name=name), None, None)


def patch(name: str, replicas: int) -> Request:
    return Request(
        "PATCH",
        SCALE_PATH.format(namespace=NAMESPACE, name=name),
        # The client's first choice is JSON Patch, which it swaps for a strategic merge
        # patch when the body is an object rather than a list of operations.
        "application/strategic-merge-patch+json",
        {"spec": {"replicas": replicas}},
    )


def test_replicas_are_patched_only_when_the_decision_differs(api_server: FakeApiServer) -> None:
    scaler = KubernetesScaler(NAMESPACE, DEPLOYMENTS, api=apps_api(api_server.url))

    changes = scaler.apply(decision(cpu=2, gpu=3))  # cpu is at 2 already, gpu at 1

    assert changes == [ReplicaChange("gpu", GPU, before=1, after=3)]
    assert api_server.requests == [get(CPU), get(GPU), patch(GPU, 3)]
    assert (api_server.replicas(CPU), api_server.replicas(GPU)) == (2, 3)


def test_an_unchanged_decision_reads_and_writes_nothing(api_server: FakeApiServer) -> None:
    scaler = KubernetesScaler(NAMESPACE, DEPLOYMENTS, api=apps_api(api_server.url))
    scaler.apply(decision(cpu=4, gpu=1))
    api_server.requests.clear()

    assert scaler.apply(decision(cpu=4, gpu=1)) == []
    assert api_server.requests == [get(CPU), get(GPU)]


def test_a_pool_scales_to_zero_and_a_pool_the_decision_does_not_size_is_left_alone(
    api_server: FakeApiServer,
) -> None:
    scaler = KubernetesScaler(NAMESPACE, DEPLOYMENTS, api=apps_api(api_server.url))

    assert scaler.apply(decision(cpu=0)) == [ReplicaChange("cpu", CPU, before=2, after=0)]
    assert api_server.requests == [get(CPU), patch(CPU, 0)]
    assert api_server.replicas(GPU) == 1

    # At zero the API leaves spec.replicas out of the Scale; that reads as 0, not as a change.
    api_server.requests.clear()
    assert scaler.apply(decision(cpu=0)) == []
    assert api_server.requests == [get(CPU)]


def test_a_missing_deployment_is_an_error_naming_namespace_and_deployment(
    api_server: FakeApiServer,
) -> None:
    scaler = KubernetesScaler(
        NAMESPACE, {"cpu": "gristmill-worker-cpuu"}, api=apps_api(api_server.url)
    )

    with pytest.raises(GristmillError) as raised:
        scaler.apply(decision(cpu=3))

    assert str(raised.value) == (
        "Deployment 'gristmill-worker-cpuu' in namespace 'gristmill' does not exist "
        '(deployments.apps "gristmill-worker-cpuu" not found); GRISTMILL_K8S_DEPLOYMENTS and '
        "GRISTMILL_K8S_NAMESPACE name the workers' Deployments"
    )
    assert api_server.requests == [get("gristmill-worker-cpuu")]  # nothing patched


def test_a_forbidden_scale_is_an_error_naming_the_rbac_it_needs(
    api_server: FakeApiServer,
) -> None:
    api_server.forbidden.add(CPU)
    scaler = KubernetesScaler(NAMESPACE, DEPLOYMENTS, api=apps_api(api_server.url))

    with pytest.raises(GristmillError) as raised:
        scaler.apply(decision(cpu=3, gpu=1))

    assert str(raised.value) == (
        "not allowed to get the scale of Deployment 'gristmill-worker-cpu' in namespace "
        "'gristmill' (deployments.apps \"gristmill-worker-cpu\" is forbidden: User "
        '"system:serviceaccount:gristmill:gristmill-coordinator" cannot get resource '
        '"deployments/scale" in API group "apps" in the namespace "gristmill"); the '
        "coordinator's service account needs get and patch on deployments/scale (API group "
        "apps) in namespace 'gristmill'"
    )
    assert api_server.requests == [get(CPU)]


def test_refused_credentials_are_an_error_saying_which(api_server: FakeApiServer) -> None:
    api_server.token = "the-right-one"
    scaler = KubernetesScaler(NAMESPACE, DEPLOYMENTS, api=apps_api(api_server.url))

    with pytest.raises(GristmillError) as raised:
        scaler.apply(decision(cpu=3))

    assert str(raised.value) == (
        "the Kubernetes API did not accept the coordinator's credentials to get the scale of "
        "Deployment 'gristmill-worker-cpu' in namespace 'gristmill' (Unauthorized); check its "
        "service account token or kubeconfig user"
    )


def test_an_unreachable_api_server_is_an_error_naming_it() -> None:
    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    configuration = kubernetes.client.Configuration(host=url)
    configuration.retries = 0
    api = kubernetes.client.AppsV1Api(kubernetes.client.ApiClient(configuration))
    scaler = KubernetesScaler(NAMESPACE, DEPLOYMENTS, api=api)

    with pytest.raises(GristmillError) as raised:
        scaler.apply(decision(cpu=1))

    assert str(raised.value).startswith(
        f"cannot reach the Kubernetes API at {url} to get the scale of Deployment "
        f"'gristmill-worker-cpu' in namespace 'gristmill': "
    )


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig with one cluster at `server` and a bearer token (JSON is YAML)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "coordinator", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "coordinator"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))
    return path


def test_the_scaler_from_env_talks_to_the_kubeconfigs_cluster_outside_a_pod(
    api_server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", api_server.url)))
    monkeypatch.setenv("GRISTMILL_K8S_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("GRISTMILL_K8S_DEPLOYMENTS", f" cpu = {CPU} ")

    scaler = scaler_from_env("kubernetes")

    assert isinstance(scaler, KubernetesScaler)
    assert (scaler.name, scaler.namespace, scaler.deployments) == (
        "kubernetes",
        NAMESPACE,
        {"cpu": CPU},
    )
    assert scaler.apply(decision(cpu=5, gpu=2)) == [ReplicaChange("cpu", CPU, 2, 5)]
    assert [r.authorization for r in api_server.requests] == ["Bearer t0ken"] * 2


def test_the_namespace_defaults_to_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", "http://x")))
    monkeypatch.delenv("GRISTMILL_K8S_NAMESPACE", raising=False)
    monkeypatch.setenv("GRISTMILL_K8S_DEPLOYMENTS", f"cpu={CPU},gpu={GPU}")

    scaler = kubernetes_scaler_from_env()

    assert (scaler.namespace, scaler.deployments) == ("default", DEPLOYMENTS)


def test_no_cluster_configuration_is_an_error_saying_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("GRISTMILL_K8S_DEPLOYMENTS", f"cpu={CPU}")

    with pytest.raises(GristmillError) as raised:
        kubernetes_scaler_from_env()

    assert str(raised.value).startswith(
        "the kubernetes scaler found no cluster to talk to: not in a pod "
        "(Service host/port is not set.), and no usable kubeconfig ("
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "",
            "GRISTMILL_K8S_DEPLOYMENTS is not set: name each pool's worker Deployment, "
            "e.g. cpu=gristmill-worker-cpu,gpu=gristmill-worker-gpu",
        ),
        (
            "cpu=gristmill-worker-cpu,gristmill-worker-gpu",
            "GRISTMILL_K8S_DEPLOYMENTS: 'gristmill-worker-gpu' is not pool=deployment (pools: "
            "cpu, gpu; a Deployment name is lower-case letters, digits, '-' and '.'), in "
            "'cpu=gristmill-worker-cpu,gristmill-worker-gpu'",
        ),
        (
            "tpu=gristmill-worker-tpu",
            "GRISTMILL_K8S_DEPLOYMENTS: 'tpu=gristmill-worker-tpu' is not pool=deployment "
            "(pools: cpu, gpu; a Deployment name is lower-case letters, digits, '-' and '.'), "
            "in 'tpu=gristmill-worker-tpu'",
        ),
        (
            "cpu=Gristmill_Worker",
            "GRISTMILL_K8S_DEPLOYMENTS: 'cpu=Gristmill_Worker' is not pool=deployment (pools: "
            "cpu, gpu; a Deployment name is lower-case letters, digits, '-' and '.'), in "
            "'cpu=Gristmill_Worker'",
        ),
        (
            "cpu=a,,gpu=b",
            "GRISTMILL_K8S_DEPLOYMENTS: '' is not pool=deployment (pools: cpu, gpu; a "
            "Deployment name is lower-case letters, digits, '-' and '.'), in 'cpu=a,,gpu=b'",
        ),
        ("cpu=a,cpu=b", "GRISTMILL_K8S_DEPLOYMENTS: pool 'cpu' is named twice, in 'cpu=a,cpu=b'"),
    ],
)
def test_a_malformed_deployments_variable_names_the_variable_and_the_bad_part(
    raw: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_K8S_DEPLOYMENTS", raw)
    with pytest.raises(GristmillError) as raised:
        kubernetes_scaler_from_env()
    assert str(raised.value) == message


def test_a_malformed_namespace_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRISTMILL_K8S_NAMESPACE", "Gristmill Prod")
    monkeypatch.setenv("GRISTMILL_K8S_DEPLOYMENTS", f"cpu={CPU}")
    with pytest.raises(GristmillError) as raised:
        kubernetes_scaler_from_env()
    assert str(raised.value) == (
        "GRISTMILL_K8S_NAMESPACE: 'Gristmill Prod' is not a namespace name (lower-case "
        "letters, digits and '-', at most 63)"
    )


def test_without_the_client_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # `import kubernetes` now fails
    with pytest.raises(GristmillError) as raised:
        KubernetesScaler(NAMESPACE, DEPLOYMENTS)
    assert str(raised.value) == (
        "the kubernetes scaler needs the Kubernetes client: pip install 'gristmill[kubernetes]'"
    )
