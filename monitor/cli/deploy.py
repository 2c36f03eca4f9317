"""Rendered artefacts: deployment manifests, the ClickHouse cluster schema, alert rules and
dashboards (these two with the thresholds of a policy file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from monitor.cli.common import console, fail
from monitor.errors import MonitorError
from monitor.policy.alerting import RULES_FILE
from monitor.policy.config import Policy, load_policy

deploy_app = typer.Typer(no_args_is_help=True, help="Render deployment manifests.")
dashboards_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards as code.")


GRAFANA_TOKEN_ENV = "GRAFANA_TOKEN"  # noqa: S105 - likewise
POLICY_FILE = Path("deploy/policy/policy.yaml")

PolicyFile = Annotated[Path, typer.Option("--policy", help="the policy file with the thresholds")]


def policy_from(path: Path) -> Policy:
    """The policy in ``path``; an invalid or missing file exits with its error."""
    try:
        return load_policy(path)
    except MonitorError as exc:
        fail(exc)


@deploy_app.command("kubernetes")
def deploy_kubernetes(
    deploy_dir: Annotated[Path, typer.Option(help="the repo's deploy/ folder")] = Path("deploy"),
) -> None:
    """Write deploy/kubernetes/ (a Deployment, Service, PDB and HPA per role)."""
    from monitor.devtools.kubernetes import write

    for path in write(deploy_dir):
        console.print(f"wrote {path}")


@deploy_app.command("clickhouse-cluster")
def deploy_clickhouse_cluster(
    cluster: Annotated[str, typer.Option(help="cluster name in remote_servers")] = "llm_monitor",
    deploy_dir: Annotated[Path, typer.Option(help="the repo's deploy/ folder")] = Path("deploy"),
) -> None:
    """Write the Replicated + Distributed schema for a ClickHouse cluster."""
    from monitor.storage.cluster import write

    console.print(f"wrote {write(deploy_dir, cluster)}")


@deploy_app.command("alerts")
def deploy_alerts(
    policy: PolicyFile = POLICY_FILE,
    out: Annotated[Path, typer.Option(help="the Prometheus rules file to write")] = RULES_FILE,
) -> None:
    """Write the Prometheus alert rules, thresholds from the policy file."""
    from monitor.policy.alerting import write_rules

    try:
        console.print(f"wrote {write_rules(policy_from(policy), out)}")
    except MonitorError as exc:
        fail(exc)


@dashboards_app.command("build")
def dashboards_build(
    policy: PolicyFile = POLICY_FILE,
    out: Annotated[Path | None, typer.Option(help="default: dashboards/json")] = None,
) -> None:
    """Write every dashboard's JSON (what deploy/grafana provisions), threshold lines from the
    policy file."""
    from dashboards.build import OUT, write_all

    for path in write_all(policy_from(policy), out or OUT):
        console.print(f"wrote {path}")


@dashboards_app.command("push")
def dashboards_push(
    url: Annotated[str, typer.Option(help="Grafana base URL, e.g. https://grafana.example")],
    token_env: Annotated[
        str, typer.Option(help="variable holding a Grafana service-account token")
    ] = GRAFANA_TOKEN_ENV,
    folder: Annotated[str, typer.Option(help="folder title")] = "LLM monitor",
    policy: PolicyFile = POLICY_FILE,
) -> None:
    """Upload every dashboard to Grafana (grafana-client), overwriting older versions."""
    from dashboards.push import push_all

    token = os.environ.get(token_env)
    if not token:
        fail(MonitorError(f"set {token_env} to a Grafana service-account token"))
        return
    thresholds = policy_from(policy)
    try:
        for uid, version in push_all(url, token, folder, thresholds):
            console.print(f"pushed {uid} (version {version})")
    except MonitorError as exc:
        fail(exc)
