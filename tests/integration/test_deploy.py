"""Deployment artefacts: Kubernetes manifests against the Kubernetes schemas, the compose file
through Compose's own parser, the cluster schema through ClickHouse's parser; every rendered
file equal to what the code renders today."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.devtools.kubernetes import render as render_kubernetes
from monitor.storage.client import connect
from monitor.storage.cluster import render as render_cluster

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"


def test_kubernetes_manifests_are_current_and_valid() -> None:
    import kubernetes_validate

    rendered = render_kubernetes(DEPLOY)
    kinds: set[str] = set()
    for name, docs in rendered.items():
        committed = list(yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()))
        assert committed == docs, (
            f"deploy/kubernetes/{name} is stale: llm-monitor deploy kubernetes"
        )
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            kinds.add(doc["kind"])
    assert kinds == {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler"}  # fmt: skip
    embed = next(d for d in rendered["02-embed.yaml"] if d["kind"] == "Deployment")
    limits = embed["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_compose_file_parses_and_refuses_missing_secrets(tmp_path: Path) -> None:
    compose = Path(sys.executable).parent / "docker-compose"
    secrets = {"CLICKHOUSE_PASSWORD": "x" * 16, "LLM_MONITOR_POLICY__WEBHOOK_SECRET": "y" * 32,
               "LLM_MONITOR_POLICY__API_TOKEN": "z" * 32, "GRAFANA_ADMIN_PASSWORD": "w" * 16}  # fmt: skip
    base = {k: v for k, v in os.environ.items() if k not in secrets}
    args = [str(compose), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json"]
    ok = subprocess.run(args, env={**base, **secrets}, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    services = yaml.safe_load(ok.stdout)["services"]
    assert {"kafka", "clickhouse", "score", "embed", "aggregate", "policy", "sink", "prometheus",
            "alertmanager", "grafana"} <= set(services)  # fmt: skip
    devices = services["embed"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    refused = subprocess.run(args, env=base, capture_output=True, text=True, timeout=60)
    missing = re.search(r"required variable (\w+) is missing", refused.stderr)
    assert missing and missing.group(1) in secrets
    assert not refused.stdout.strip()  # no configuration without the secrets


def test_cluster_schema_is_current_and_parses() -> None:
    text = (DEPLOY / "clickhouse/cluster/schema.sql").read_text()
    assert text == render_cluster("llm_monitor"), "stale: llm-monitor deploy clickhouse-cluster"
    statements = [s.strip() for s in re.sub(r"^--.*$", "", text, flags=re.M).split(";")]
    statements = [s for s in statements if s]
    assert all("ON CLUSTER llm_monitor" in s for s in statements)
    client = connect("chdb://:memory:")
    for statement in statements:
        client.query(f"EXPLAIN AST {statement}")  # ClickHouse's own parser
    locals_ = [s for s in statements if re.search(r"_local ON CLUSTER \w+ \(", s)]
    assert locals_ and all("ENGINE = Replicated" in s for s in locals_)
