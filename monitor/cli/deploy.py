"""Rendered artefacts: deployment manifests, the ClickHouse cluster schema, dashboards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from monitor.cli.common import console, fail
from monitor.errors import MonitorError

deploy_app = typer.Typer(no_args_is_help=True, help="Render deployment manifests.")
dashboards_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards as code.")


GRAFANA_TOKEN_ENV = "GRAFANA_TOKEN"  # noqa: S105 - likewise


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


@dashboards_app.command("build")
def dashboards_build(
    out: Annotated[Path | None, typer.Option(help="default: dashboards/json")] = None,
) -> None:
    """Write every dashboard's JSON (what deploy/grafana provisions)."""
    from dashboards.build import OUT, write_all

    for path in write_all(out or OUT):
        console.print(f"wrote {path}")


@dashboards_app.command("push")
def dashboards_push(
    url: Annotated[str, typer.Option(help="Grafana base URL, e.g. https://grafana.example")],
    token_env: Annotated[
        str, typer.Option(help="variable holding a Grafana service-account token")
    ] = GRAFANA_TOKEN_ENV,
    folder: Annotated[str, typer.Option(help="folder title")] = "LLM monitor",
) -> None:
    """Upload every dashboard to Grafana (grafana-client), overwriting older versions."""
    from dashboards.push import push_all

    token = os.environ.get(token_env)
    if not token:
        fail(MonitorError(f"set {token_env} to a Grafana service-account token"))
        return
    try:
        for uid, version in push_all(url, token, folder):
            console.print(f"pushed {uid} (version {version})")
    except MonitorError as exc:
        fail(exc)
