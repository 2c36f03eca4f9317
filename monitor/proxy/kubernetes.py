"""The proxy as a Kubernetes sidecar: the container, and an example app Deployment wearing it.

The proxy runs in the app's pod, not in the llm-monitor namespace: the app calls
``http://127.0.0.1:8080/v1`` as its OpenAI base URL. It is a native sidecar (an init container
with ``restartPolicy: Always``, Kubernetes 1.29+): it starts, and passes its startup probe,
before the app container starts, and stops after it. Probes: ``/readyz`` for start-up and
readiness (serving, and the kill-switch state known or the start-up grace over, 5 s: Kafka
being down never keeps it unready longer), ``/healthz`` for liveness (the event loop
answers). Prometheus scrapes ``/metrics`` on the same port. ``render()`` gives the example's
documents; ``deploy/kubernetes/sidecar/`` holds them (``write``; a test keeps them current).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

IMAGE: Final = "ghcr.io/llm-monitor/llm-monitor:1.0.0"  # monitor.devtools.kubernetes.IMAGE
PORT: Final = 8080
KAFKA: Final = "kafka.kafka.svc:9092"  # the llm-monitor ConfigMap's kafka-bootstrap
EXAMPLE_FILE: Final = "app-with-proxy.yaml"


def sidecar_container(
    upstream: str,
    *,
    fallback_upstream: str | None = None,
    deployment: str = "stable",
    app: str = "",
    model_version: str | None = None,
    guard: str = "",
    kafka: str = KAFKA,
    image: str = IMAGE,
    port: int = PORT,
) -> dict[str, Any]:
    """The proxy container, as a native sidecar (an init container that keeps running)."""
    args = ["proxy", "--upstream", upstream, "--host", "0.0.0.0", "--port", str(port),  # noqa: S104
            "--deployment", deployment]  # fmt: skip
    if fallback_upstream:
        args += ["--fallback-upstream", fallback_upstream]
    if app:
        args += ["--app", app]
    if model_version:
        args += ["--model-version", model_version]
    if guard:
        args += ["--block", guard]

    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "llm-proxy"}}

    return {
        "name": "llm-monitor-proxy",
        "image": image,
        "args": args,
        "restartPolicy": "Always",
        "env": [{"name": "KAFKA_BOOTSTRAP_SERVERS", "value": kafka}],
        "ports": [{"name": "llm-proxy", "containerPort": port}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}},  # fmt: skip
        "startupProbe": {**probe("/readyz"), "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {**probe("/healthz"), "periodSeconds": 10, "timeoutSeconds": 2,
                          "failureThreshold": 3},  # fmt: skip
        "readinessProbe": {**probe("/readyz"), "periodSeconds": 2, "timeoutSeconds": 2,
                           "failureThreshold": 2},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": 10001,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "llm-proxy-tmp", "mountPath": "/tmp"}],  # noqa: S108
    }  # fmt: skip


def example_deployment() -> dict[str, Any]:
    """An app (support-bot, canary) whose OpenAI client goes through the sidecar; a vLLM
    service upstream and a smaller model as the fallback while the kill switch holds."""
    labels = {"app.kubernetes.io/name": "support-bot", "app.kubernetes.io/component": "canary"}
    proxy = sidecar_container(
        "http://vllm.models.svc:8000/v1",
        fallback_upstream="http://vllm-small.models.svc:8000/v1",
        deployment="canary",
        app="support-bot",
    )
    app_container = {
        "name": "app",
        "image": "registry.example.com/support-bot:2.3.1",
        "env": [{"name": "OPENAI_BASE_URL", "value": f"http://127.0.0.1:{PORT}/v1"}],
        "ports": [{"name": "http", "containerPort": 8000}],
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },  # fmt: skip
    }
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                   "prometheus.io/path": "/metrics"}  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "support-bot-canary", "namespace": "support", "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": annotations},
                "spec": {
                    "initContainers": [proxy],
                    "containers": [app_container],
                    "volumes": [{"name": "llm-proxy-tmp", "emptyDir": {}}],
                },
            },
        },
    }


def render() -> dict[str, list[dict[str, Any]]]:
    """File name (under deploy/kubernetes/sidecar/) → documents."""
    return {EXAMPLE_FILE: [example_deployment()]}


def write(deploy_dir: Path) -> list[Path]:
    out = deploy_dir / "kubernetes" / "sidecar"
    out.mkdir(parents=True, exist_ok=True)
    header = (
        "# Rendered from monitor/proxy/kubernetes.py: an example app Deployment with the\n"
        "# llm-monitor proxy as a native sidecar (Kubernetes 1.29+). Not part of the stack's\n"
        "# kustomization: copy the initContainers entry into your own app's pod.\n"
    )
    paths = []
    for name, docs in render().items():
        path = out / name
        path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False, width=100))
        paths.append(path)
    return paths
