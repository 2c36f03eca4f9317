"""The policy's surfaces: kill switches, incidents, policy files, the webhook receiver."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from monitor.cli.common import DataDir, TokenEnv, console, err, fail, settings_for
from monitor.errors import MonitorError

killswitch_app = typer.Typer(no_args_is_help=True, help="Engage, release or read kill switches.")
incident_app = typer.Typer(no_args_is_help=True, help="Postmortem drafts from stored evidence.")
policy_app = typer.Typer(
    no_args_is_help=True, help="Check policy files; print the Flagger gate token."
)


WorkerUrl = Annotated[
    str, typer.Option("--url", help="a worker running the policy role (its metrics port)")
]


TOKEN_ENV = "LLM_MONITOR_POLICY__API_TOKEN"  # noqa: S105 - a variable's name, not a secret


SECRET_ENV = "LLM_MONITOR_POLICY__WEBHOOK_SECRET"  # noqa: S105 - likewise


def _killswitch_call(method: str, url: str, token_env: str, body: dict[str, str] | None) -> None:
    import httpx

    token = os.environ.get(token_env)
    if not token:
        fail(MonitorError(f"set {token_env} to the kill-switch API token"))
        return
    try:
        response = httpx.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=15
        )
    except httpx.HTTPError as exc:
        fail(MonitorError(f"{url}: {exc}"))
        return
    if response.status_code >= 400:
        fail(MonitorError(f"{url}: HTTP {response.status_code} {response.text.strip()}"))
    sys.stdout.write(json.dumps(response.json()) + "\n")


@killswitch_app.command("status")
def killswitch_status(
    url: WorkerUrl = "http://127.0.0.1:9464",
    token_env: TokenEnv = TOKEN_ENV,
) -> None:
    """Every kill switch the worker holds."""
    _killswitch_call("GET", f"{url.rstrip('/')}/killswitch", token_env, None)


def _change(verb: str, url: str, token_env: str, model: str, deployment: str, reason: str) -> None:
    body = {"model": model, "deployment": deployment, "reason": reason, "actor": "cli"}
    _killswitch_call("POST", f"{url.rstrip('/')}/killswitch/{verb}", token_env, body)


Model = Annotated[str, typer.Option(help="model name, as in events")]


Deployment = Annotated[str, typer.Option(help="deployment, e.g. canary")]


Reason = Annotated[str, typer.Option(help="why; kept in the audit log and the incident")]


@killswitch_app.command("engage")
def killswitch_engage(
    model: Model, deployment: Deployment, reason: Reason,
    url: WorkerUrl = "http://127.0.0.1:9464", token_env: TokenEnv = TOKEN_ENV,
) -> None:  # fmt: skip
    """Engage: the kill webhook fires, rollbacks for it are silenced, an incident opens."""
    _change("engage", url, token_env, model, deployment, reason)


@killswitch_app.command("release")
def killswitch_release(
    model: Model, deployment: Deployment, reason: Reason,
    url: WorkerUrl = "http://127.0.0.1:9464", token_env: TokenEnv = TOKEN_ENV,
) -> None:  # fmt: skip
    """Release: the resume webhook fires."""
    _change("release", url, token_env, model, deployment, reason)


@incident_app.command("report")
def incident_report(
    incident_id: Annotated[str, typer.Argument(help="e.g. inc-1a2b3c4d5e6f")],
    data_dir: DataDir = None,
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
) -> None:
    """Write a markdown postmortem draft (stdout, or --output FILE)."""
    from monitor.policy.incident import incident_report as build
    from monitor.storage.client import connect

    try:
        settings = settings_for(data_dir)
        text = build(connect(settings.storage_dsn), settings.storage.database, incident_id)
    except MonitorError as exc:
        fail(exc)
        return
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


@policy_app.command("check")
def policy_check(file: Annotated[Path, typer.Argument(help="policy YAML")]) -> None:
    """Validate a policy file; errors name the field and the fix. Warns about rules benign
    traffic alone could fire, given the detectors' measured false-positive rates, and about a
    judge rule that disagrees with the judge settings (environment or config file)."""
    from monitor.policy.checks import policy_warnings
    from monitor.policy.config import load_policy

    try:
        policy = load_policy(file)
        settings = settings_for()
    except MonitorError as exc:
        fail(exc)
        return
    hooks = policy.webhooks
    console.print(
        f"{file}: valid. stages {[s.name for s in policy.stages]}, min_samples "
        f"{policy.min_samples}, confidence {policy.confidence}, dry_run {policy.dry_run}, "
        f"webhooks rollback {len(hooks.rollback)} kill {len(hooks.kill)} resume "
        f"{len(hooks.resume)}"
    )
    for warning in policy_warnings(policy, settings):
        err.print(f"[yellow]warning:[/] {warning}")


@policy_app.command("gate-token")
def policy_gate_token(token_env: TokenEnv = TOKEN_ENV) -> None:
    """Print the Flagger gate's token, derived from the API token: the Canary's webhook sends
    it as metadata.token (Flagger cannot send headers). It opens /flagger/gate and nothing else."""
    from monitor.policy.signing import gate_token

    token = os.environ.get(token_env)
    if not token:
        fail(MonitorError(f"set {token_env} to the kill-switch API token"))
    sys.stdout.write(gate_token(token.encode()).decode() + "\n")


StorePath = Annotated[
    Path,
    typer.Option(
        "--store",
        help="sqlite file of accepted signatures and delivered idempotency keys, so that a "
        "delivery replayed after a restart is still refused (created when missing)",
    ),
]


def receiver(
    port: Annotated[int, typer.Option()] = 9095,
    secret_env: Annotated[
        str, typer.Option(help="variable holding the webhook secret")
    ] = SECRET_ENV,
    store: StorePath = Path("data/receiver-seen.sqlite3"),
) -> None:
    """Run the reference webhook receiver on 127.0.0.1:PORT, verifying signatures."""
    from monitor.policy.receiver import Receiver

    secret = os.environ.get(secret_env, "")
    if not secret:
        fail(MonitorError(f"set {secret_env} to the webhook secret"))
    try:
        r = Receiver.persistent(secret.encode(), store)
    except (OSError, sqlite3.Error) as exc:
        fail(MonitorError(f"--store {store}: {exc}. Fix: point --store at a writable file"))
    url = r.serve(port)
    err.print(
        f"receiver on {url} (POST /rollback, /kill, /resume; /alertmanager unsigned); "
        f"replay memory in {store}"
    )
    seen = 0
    try:
        while True:
            time.sleep(0.5)
            for d in r.deliveries[seen:]:
                console.print(f"{d.event} {d.idempotency_key} verified")
            seen = len(r.deliveries)
    except KeyboardInterrupt:
        r.stop()
