"""The ``llm-monitor`` command line: one module per command group, assembled here."""

from __future__ import annotations

import logging

import typer

from monitor.cli import data, history, run
from monitor.cli.bench import bench_app
from monitor.cli.deploy import dashboards_app, deploy_app
from monitor.cli.evaluate import eval_app
from monitor.cli.policy import incident_app, killswitch_app, policy_app, receiver
from monitor.cli.proxy import proxy

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Streaming monitor for LLM apps."
)
for command in (run.demo, run.worker, run.replay, run.probe, run.generate, data.migrate,
                data.query, run.broker, receiver, proxy, history.backfill,
                history.compare):  # fmt: skip
    app.command()(command)
for group, name in (
    (eval_app, "eval"), (killswitch_app, "killswitch"), (incident_app, "incident"),
    (policy_app, "policy"), (bench_app, "bench"), (dashboards_app, "dashboards"),
    (deploy_app, "deploy"),
):  # fmt: skip
    app.add_typer(group, name=name)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()
