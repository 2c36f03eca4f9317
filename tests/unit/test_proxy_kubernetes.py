"""The proxy sidecar's manifest: current with the code, valid for Kubernetes, probed."""

from __future__ import annotations

from pathlib import Path

import yaml

from monitor.proxy.kubernetes import render, sidecar_container

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"  # as tests/integration/test_deploy.py


def test_sidecar_example_is_current_and_valid() -> None:
    import kubernetes_validate

    for name, docs in render().items():
        path = ROOT / "deploy/kubernetes/sidecar" / name
        committed = list(yaml.safe_load_all(path.read_text()))
        assert committed == docs, f"{path} is stale: monitor.proxy.kubernetes.write"
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_sidecar_starts_before_the_app_with_probes_on_its_own_pages() -> None:
    (deployment,) = render()["app-with-proxy.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (proxy,) = pod["initContainers"]
    assert proxy["restartPolicy"] == "Always"  # a native sidecar: up before the app, down after
    assert proxy["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["args"][:3] == ["proxy", "--upstream", "http://vllm.models.svc:8000/v1"]
    assert "--fallback-upstream" in proxy["args"]
    (app,) = pod["containers"]
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8080/v1"} in app["env"]
    guarded = sidecar_container("http://m/v1", guard="pii,injection")
    assert guarded["args"][-2:] == ["--block", "pii,injection"]
