"""Kubernetes manifests for the worker roles, rendered from one description per role.

Five Deployments differ only in role, replicas, resources and (for embed) a GPU, so they are
rendered rather than copied: ``llm-monitor deploy kubernetes`` writes deploy/kubernetes/, a
test keeps the committed files equal to this code and validates each with the Kubernetes
JSON schemas (kubernetes-validate). Per role: a Deployment (probes on /health, resources,
non-root, read-only root filesystem), a Service with Prometheus scrape annotations, a
PodDisruptionBudget, and for the scalable roles an HPA on consumer lag (an External metric
served by prometheus-adapter from ``llm_monitor_consumer_lag_messages``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "llm-monitor"
IMAGE = "ghcr.io/llm-monitor/llm-monitor:1.0.0"
PORT = 9464
SECRET = "llm-monitor-secrets"  # noqa: S105 - the Secret object's name
SECRET_KEYS = {
    "LLM_MONITOR_STORAGE__DSN": "storage-dsn",
    "LLM_MONITOR_POLICY__WEBHOOK_SECRET": "webhook-secret",
    "LLM_MONITOR_POLICY__API_TOKEN": "api-token",
}


@dataclass(frozen=True)
class RoleSpec:
    role: str
    replicas: int
    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str
    gpus: int = 0
    scale_on_topic: str | None = None
    max_replicas: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)


ROLES = (
    RoleSpec("score", 2, "1", "1Gi", "2", "2Gi", scale_on_topic="llm.events", max_replicas=12),
    RoleSpec("embed", 1, "2", "6Gi", "4", "12Gi", gpus=1, scale_on_topic="llm.embed",
             max_replicas=4, extra_env={"LLM_MONITOR_DETECTORS__EMBEDDING__DEVICE": "cuda"}),
    RoleSpec("aggregate", 1, "500m", "512Mi", "1", "1Gi"),
    RoleSpec("policy", 1, "250m", "256Mi", "1", "512Mi"),
    RoleSpec("sink", 2, "500m", "1Gi", "2", "2Gi"),
)  # fmt: skip


def _labels(role: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "llm-monitor", "app.kubernetes.io/component": role}


def _meta(name: str, role: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE, **extra}
    if role:
        meta["labels"] = _labels(role)
    return meta


def deployment(spec: RoleSpec) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "LLM_MONITOR_ROLES", "value": f'["{spec.role}"]'},
        {"name": "LLM_MONITOR_CONFIG_FILE", "value": "/etc/llm-monitor/config.yaml"},
        {"name": "LLM_MONITOR_POLICY__FILE", "value": "/etc/llm-monitor/policy.yaml"},
        {"name": "LLM_MONITOR_METRICS__HOST", "value": "0.0.0.0"},  # noqa: S104 - in a pod
        {"name": "LLM_MONITOR_DATA_DIR", "value": "/var/lib/llm-monitor"},
        {"name": "KAFKA_BOOTSTRAP_SERVERS",
         "valueFrom": {"configMapKeyRef": {"name": "llm-monitor", "key": "kafka-bootstrap"}}},
        *({"name": k, "value": v} for k, v in sorted(spec.extra_env.items())),
        *({"name": var, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
          for var, key in SECRET_KEYS.items()),
    ]  # fmt: skip
    limits: dict[str, Any] = {"cpu": spec.cpu_limit, "memory": spec.memory_limit}
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "terminationGracePeriodSeconds": 60,
        "containers": [{
            "name": "worker",
            "image": IMAGE,
            "args": ["worker"],
            "env": env,
            "ports": [{"name": "http", "containerPort": PORT}],
            "resources": {"requests": requests, "limits": limits},
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"},
                               "periodSeconds": 5, "failureThreshold": 3},
            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"},
                              "initialDelaySeconds": 60, "periodSeconds": 15,
                              "failureThreshold": 4},
            "startupProbe": {"httpGet": {"path": "/health", "port": "http"},
                             "periodSeconds": 5, "failureThreshold": 60},
            "securityContext": {"allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/llm-monitor", "readOnly": True},
                {"name": "data", "mountPath": "/var/lib/llm-monitor"},
                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a pod-private emptyDir
            ],
        }],
        "volumes": [
            {"name": "config", "configMap": {"name": "llm-monitor"}},
            {"name": "data", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }  # fmt: skip
    if spec.gpus:
        limits["nvidia.com/gpu"] = spec.gpus
        requests["nvidia.com/gpu"] = spec.gpus
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                               "effect": "NoSchedule"}]  # fmt: skip
        pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(f"llm-monitor-{spec.role}", spec.role),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": _labels(spec.role)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": _labels(spec.role)}, "spec": pod},
        },
    }  # fmt: skip


def service(spec: RoleSpec) -> dict[str, Any]:
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                   "prometheus.io/path": "/metrics"}  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(f"llm-monitor-{spec.role}", spec.role, annotations=annotations),
        "spec": {"selector": _labels(spec.role),
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }  # fmt: skip


def disruption_budget(spec: RoleSpec) -> dict[str, Any]:
    budget = {"minAvailable": 1} if spec.replicas > 1 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(f"llm-monitor-{spec.role}", spec.role),
        "spec": {**budget, "selector": {"matchLabels": _labels(spec.role)}},
    }


def autoscaler(spec: RoleSpec) -> dict[str, Any]:
    metric = {
        "type": "External",
        "external": {
            "metric": {"name": "llm_monitor_consumer_lag_messages",
                       "selector": {"matchLabels": {"topic": spec.scale_on_topic or ""}}},
            "target": {"type": "AverageValue", "averageValue": "5000"},
        },
    }  # fmt: skip
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(f"llm-monitor-{spec.role}", spec.role),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": f"llm-monitor-{spec.role}"},
            "minReplicas": spec.replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [metric],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }  # fmt: skip


def common(config: str, policy: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("llm-monitor"),
         "data": {"kafka-bootstrap": "kafka.kafka.svc:9092", "config.yaml": config,
                  "policy.yaml": policy}},
    ]  # fmt: skip


def render(deploy_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """File name → documents."""
    config = (deploy_dir / "config/config.yaml").read_text()
    policy = (deploy_dir / "policy/policy.yaml").read_text()
    files = {"00-common.yaml": common(config, policy)}
    for i, spec in enumerate(ROLES, start=1):
        docs = [deployment(spec), service(spec), disruption_budget(spec)]
        if spec.scale_on_topic:
            docs.append(autoscaler(spec))
        files[f"{i:02d}-{spec.role}.yaml"] = docs
    return files


def write(deploy_dir: Path) -> list[Path]:
    out = deploy_dir / "kubernetes"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    header = "# Rendered by `llm-monitor deploy kubernetes` from monitor/devtools/kubernetes.py.\n"
    for name, docs in render(deploy_dir).items():
        path = out / name
        path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False, width=100))
        paths.append(path)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [p.name for p in paths]}  # fmt: skip
    (out / "kustomization.yaml").write_text(header + yaml.safe_dump(kustomization, sort_keys=False))
    from monitor.proxy.kubernetes import write as write_sidecar

    write_sidecar(deploy_dir)  # deploy/kubernetes/sidecar/: an example app, not a resource here
    return paths
