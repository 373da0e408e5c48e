"""Carries a scaling decision out on Kubernetes: sets each pool's worker Deployment's replicas.

Through the Deployment's `scale` subresource (`apps/v1`, an `autoscaling/v1` Scale), read
first and patched only where the decision wants another count, so an unchanged decision costs
one GET per pool and writes nothing. The service account it runs as needs `get` and `patch` on
`deployments/scale` in its namespace (docs/autoscaling.md has the Role).

The `kubernetes` client is an optional dependency (`pip install 'gristmill[kubernetes]'`),
imported only when a scaler is made, so the coordinator runs without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gristmill.errors import GristmillError
from services.coordinator.scaling.policy import Decision

if TYPE_CHECKING:
    from kubernetes.client import AppsV1Api

__all__ = [
    "POOLS",
    "KubernetesScaler",
    "ReplicaChange",
    "kubernetes_scaler_from_env",
    "parse_deployments",
]

log = logging.getLogger(__name__)

POOLS = ("cpu", "gpu")
# A Deployment's name is a DNS subdomain; a namespace's a DNS label (RFC 1123).
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DEPLOYMENT = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_NAMESPACE = re.compile(_LABEL)


@dataclass(frozen=True)
class ReplicaChange:
    """One Deployment scaled: its pool, name, and replicas before and after."""

    pool: str
    deployment: str
    before: int
    after: int


def _client() -> Any:
    """The `kubernetes` package, or an error that says how to install it."""
    try:
        import kubernetes
    except ImportError as error:
        raise GristmillError(
            "the kubernetes scaler needs the Kubernetes client: pip install 'gristmill[kubernetes]'"
        ) from error
    return kubernetes


class KubernetesScaler:
    """Sets the replicas of each pool's Deployment in `namespace` to the decision's workers
    (module docstring). `api`: an `AppsV1Api` (default: one configured in-cluster, else from
    the kubeconfig). `apply` blocks on HTTP: call it from a thread in async code."""

    name = "kubernetes"

    def __init__(
        self, namespace: str, deployments: Mapping[str, str], api: AppsV1Api | None = None
    ):
        kubernetes = _client()
        self.namespace = namespace
        self.deployments = dict(deployments)
        self.api = api if api is not None else kubernetes.client.AppsV1Api(_api_client())

    def apply(self, decision: Decision) -> list[ReplicaChange]:
        """Patch the replicas of each pool's Deployment whose `spec.replicas` is not the
        decision's workers for that pool; returns what changed. A pool the decision does not
        size is left alone."""
        changes = []
        for pool, deployment in sorted(self.deployments.items()):
            if pool not in decision.workers:
                continue
            wanted = decision.workers[pool]
            current = self._call(
                "get", deployment, self.api.read_namespaced_deployment_scale
            ).spec.replicas
            current = current or 0  # a Scale leaves out replicas of 0 (omitempty)
            if current == wanted:
                continue
            self._call(
                "patch",
                deployment,
                self.api.patch_namespaced_deployment_scale,
                body={"spec": {"replicas": wanted}},
            )
            log.info(
                "kubernetes: %s/%s (%s pool) %d -> %d replicas",
                self.namespace,
                deployment,
                pool,
                current,
                wanted,
            )
            changes.append(ReplicaChange(pool, deployment, current, wanted))
        return changes

    def _call(self, verb: str, deployment: str, method: Any, **kwargs: Any) -> Any:
        """`method` on the Deployment's scale, its API errors said in gristmill's terms."""
        import urllib3

        kubernetes = _client()
        where = f"Deployment {deployment!r} in namespace {self.namespace!r}"
        try:
            return method(name=deployment, namespace=self.namespace, **kwargs)
        except urllib3.exceptions.HTTPError as error:
            host = self.api.api_client.configuration.host
            raise GristmillError(
                f"cannot reach the Kubernetes API at {host} to {verb} the scale of {where}: {error}"
            ) from error
        except kubernetes.client.ApiException as error:
            detail = _message(error)
            if error.status == 404:
                raise GristmillError(
                    f"{where} does not exist ({detail}); GRISTMILL_K8S_DEPLOYMENTS and "
                    f"GRISTMILL_K8S_NAMESPACE name the workers' Deployments"
                ) from None
            if error.status == 401:
                raise GristmillError(
                    f"the Kubernetes API did not accept the coordinator's credentials to {verb} "
                    f"the scale of {where} ({detail}); check its service account token or "
                    f"kubeconfig user"
                ) from None
            if error.status == 403:
                raise GristmillError(
                    f"not allowed to {verb} the scale of {where} ({detail}); the "
                    f"coordinator's service account needs get and patch on deployments/scale "
                    f"(API group apps) in namespace {self.namespace!r}"
                ) from None
            raise GristmillError(
                f"could not {verb} the scale of {where}: HTTP {error.status} ({detail})"
            ) from None


def _message(error: Any) -> str:
    """The API server's own message (a `Status` body), else the HTTP reason."""
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.reason)


def _api_client() -> Any:
    """An API client configured in-cluster (a pod's service account), else from the
    kubeconfig (`KUBECONFIG`, `~/.kube/config`)."""
    kubernetes = _client()
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException as in_cluster:
        try:
            # The client reads KUBECONFIG once, when imported; this reads it now.
            kubernetes.config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None,
                client_configuration=configuration,
            )
        except (kubernetes.config.ConfigException, OSError) as kubeconfig:
            raise GristmillError(
                f"the kubernetes scaler found no cluster to talk to: not in a pod "
                f"({in_cluster}), and no usable kubeconfig ({kubeconfig})"
            ) from kubeconfig
    return kubernetes.client.ApiClient(configuration)


def parse_deployments(raw: str, variable: str = "GRISTMILL_K8S_DEPLOYMENTS") -> dict[str, str]:
    """`cpu=NAME,gpu=NAME` as {pool: Deployment name}; what does not parse is an error naming
    `variable` and the part."""
    if not raw.strip():
        raise GristmillError(
            f"{variable} is not set: name each pool's worker Deployment, "
            f"e.g. cpu=gristmill-worker-cpu,gpu=gristmill-worker-gpu"
        )
    deployments: dict[str, str] = {}
    for part in raw.split(","):
        pool, sep, name = (s.strip() for s in part.partition("="))
        if not sep or pool not in POOLS or not _DEPLOYMENT.fullmatch(name) or len(name) > 253:
            raise GristmillError(
                f"{variable}: {part.strip()!r} is not pool=deployment (pools: "
                f"{', '.join(POOLS)}; a Deployment name is lower-case letters, digits, '-' "
                f"and '.'), in {raw!r}"
            )
        if pool in deployments:
            raise GristmillError(f"{variable}: pool {pool!r} is named twice, in {raw!r}")
        deployments[pool] = name
    return deployments


def kubernetes_scaler_from_env() -> KubernetesScaler:
    """A `KubernetesScaler` for `GRISTMILL_K8S_NAMESPACE` (default `default`) and the
    Deployments `GRISTMILL_K8S_DEPLOYMENTS` names, configured in-cluster, else by kubeconfig."""
    namespace = os.environ.get("GRISTMILL_K8S_NAMESPACE", "").strip() or "default"
    if not _NAMESPACE.fullmatch(namespace) or len(namespace) > 63:
        raise GristmillError(
            f"GRISTMILL_K8S_NAMESPACE: {namespace!r} is not a namespace name (lower-case "
            f"letters, digits and '-', at most 63)"
        )
    deployments = parse_deployments(os.environ.get("GRISTMILL_K8S_DEPLOYMENTS", ""))
    return KubernetesScaler(namespace, deployments)
