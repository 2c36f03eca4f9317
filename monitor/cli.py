"""The ``llm-monitor`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from monitor.config import load_settings
from monitor.errors import MonitorError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Streaming monitor for LLM apps."
)
eval_app = typer.Typer(no_args_is_help=True, help="Measure a detector on labelled data.")
app.add_typer(eval_app, name="eval")
killswitch_app = typer.Typer(no_args_is_help=True, help="Engage, release or read kill switches.")
app.add_typer(killswitch_app, name="killswitch")
incident_app = typer.Typer(no_args_is_help=True, help="Postmortem drafts from stored evidence.")
app.add_typer(incident_app, name="incident")
policy_app = typer.Typer(no_args_is_help=True, help="Check policy files.")
app.add_typer(policy_app, name="policy")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (also under bench/).")
app.add_typer(bench_app, name="bench")
dashboards_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards as code.")
app.add_typer(dashboards_app, name="dashboards")
deploy_app = typer.Typer(no_args_is_help=True, help="Render deployment manifests.")
app.add_typer(deploy_app, name="deploy")
console = Console()
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option(help="where chdb and logs live (default ./data)")]


def _settings(data_dir: Path | None = None) -> Any:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return load_settings(**overrides)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/] {exc}")
    raise typer.Exit(2)


@app.command()
def demo(
    input: Annotated[
        Path | None, typer.Option(help="JSONL events instead of generated ones")
    ] = None,
    events: Annotated[int, typer.Option(help="generated events")] = 20_000,
    data_dir: DataDir = None,
    seed: Annotated[int, typer.Option()] = 7,
    semantic: Annotated[
        bool, typer.Option(help="run the embedding-backed detectors (the embed role)")
    ] = True,
) -> None:
    """Bundled broker + worker + generated traffic with incidents; prints a summary."""
    from monitor.demo import run_demo
    from monitor.generate import generate_events

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = _settings(data_dir or Path("data"))
        if input is not None:
            records = [(b"", line.rstrip(b"\n")) for line in input.open("rb") if line.strip()]
        else:
            records = list(generate_events(events, seed=seed))
        run_demo(settings, records, semantic=semantic)
    except MonitorError as exc:
        _fail(exc)


@app.command()
def worker() -> None:
    """Run a long-lived worker for the roles in LLM_MONITOR_ROLES (default: all)."""
    import faust

    from monitor.broker import ensure_topics, pipeline_topics
    from streams.app import app_id_for, create_app

    try:
        settings = _settings()
        bootstrap = settings.kafka.bootstrap_servers
        if bootstrap:
            asyncio.run(
                ensure_topics(
                    bootstrap,
                    pipeline_topics(settings.kafka, [app_id_for(settings)]),
                    settings.kafka.replication_factor,
                )
            )
        faust_app = create_app(settings)
    except MonitorError as exc:
        _fail(exc)
        return
    faust.Worker(
        faust_app, loglevel=settings.log_level.upper(), quiet=True
    ).execute_from_commandline()


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="JSONL, one event per line")],
    topic: Annotated[str | None, typer.Option(help="default: the events topic")] = None,
) -> None:
    """Publish a JSONL file to the events topic, line by line, as raw bytes."""
    from monitor.demo import produce

    try:
        settings = _settings()
        if not settings.kafka.bootstrap_servers:
            raise MonitorError("set KAFKA_BOOTSTRAP_SERVERS to the broker to replay into")
        lines = [line.rstrip(b"\n") for line in file.open("rb") if line.strip()]
        with Progress(console=err) as bar:
            task = bar.add_task(f"replaying {file.name}", total=len(lines))

            def records() -> Any:
                for line in lines:
                    bar.advance(task)
                    key = _request_id(line)
                    yield key, line

            sent = asyncio.run(
                produce(
                    settings.kafka.bootstrap_servers,
                    topic or settings.kafka.events_topic,
                    records(),
                )
            )
        console.print(f"sent {sent} records")
    except MonitorError as exc:
        _fail(exc)


def _request_id(line: bytes) -> bytes:
    try:
        value = json.loads(line).get("request_id", "")
        return str(value).encode()
    except (ValueError, AttributeError):
        return b""


@app.command()
def probe(
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://host/v1")],
    model: Annotated[str, typer.Option(help="model name sent to the endpoint")],
    model_version: Annotated[str, typer.Option(help="version recorded on the events")] = "probe",
    deployment: Annotated[str, typer.Option()] = "probe",
    api_key_env: Annotated[
        str, typer.Option(help="environment variable holding the API key (never printed)")
    ] = "OPENAI_API_KEY",
    repeats: Annotated[int, typer.Option(min=1, help="times each probe is sent")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 4,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="write JSONL instead of publishing")
    ] = None,
) -> None:
    """Send the counterfactual bias probe pack to a chat endpoint; publish the tagged answers."""
    from monitor.demo import produce
    from monitor.probe import ProbeTarget, run_probes

    try:
        settings = _settings()
        if output is None and not settings.kafka.bootstrap_servers:
            raise MonitorError(
                "set KAFKA_BOOTSTRAP_SERVERS to publish the probe events, or pass --output FILE"
            )
        target = ProbeTarget(
            endpoint=endpoint,
            model=model,
            model_version=model_version,
            deployment=deployment,
            api_key=os.environ.get(api_key_env) or None,
        )
        events = asyncio.run(run_probes(target, repeats=repeats, concurrency=concurrency))
        failed = sum(b'"status":"ok"' not in e for e in events)
        if output is not None:
            output.write_bytes(b"".join(e + b"\n" for e in events))
            console.print(f"wrote {len(events)} probe events to {output} ({failed} failed)")
            return
        topic = settings.kafka.events_topic
        records = [(_request_id(e), e) for e in events]
        asyncio.run(produce(str(settings.kafka.bootstrap_servers), topic, records))
        console.print(f"published {len(events)} probe events to {topic} ({failed} failed)")
    except MonitorError as exc:
        _fail(exc)


@app.command()
def generate(
    events: Annotated[int, typer.Option(help="number of records")] = 1000,
    seed: Annotated[int, typer.Option()] = 7,
    duration_s: Annotated[float, typer.Option(help="event-time span in seconds")] = 600.0,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="default: stdout")] = None,
) -> None:
    """Write synthetic traffic with seeded incidents (and ~1% malformed records) as JSONL."""
    from monitor.generate import generate_events

    out = output.open("wb") if output else sys.stdout.buffer
    try:
        for _, value in generate_events(events, seed=seed, duration_s=duration_s):
            out.write(value.replace(b"\n", b" ") + b"\n")
    finally:
        if output:
            out.close()


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the ClickHouse schema (idempotent)."""
    from monitor.storage.client import connect
    from monitor.storage.migrate import migrate as run_migrations

    try:
        settings = _settings(data_dir)
        applied = run_migrations(connect(settings.storage_dsn), settings.storage)
        console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    except MonitorError as exc:
        _fail(exc)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL; tables live in database llm_monitor")],
    data_dir: DataDir = None,
    format: Annotated[str, typer.Option(help="table or json")] = "table",
) -> None:
    """Run SQL against the monitor's ClickHouse (chdb under --data-dir, or the configured DSN)."""
    from monitor.storage.client import connect

    if format not in ("table", "json"):
        _fail(MonitorError(f"--format must be table or json, got {format!r}"))
    try:
        settings = _settings(data_dir)
        result = connect(settings.storage_dsn).query(sql)
    except MonitorError as exc:
        _fail(exc)
        return
    except Exception as exc:  # the server's own message is the useful part
        _fail(MonitorError(str(exc).strip().splitlines()[0]))
        return
    names = list(result.column_names)
    if format == "json":
        rows = [dict(zip(names, row, strict=True)) for row in result.result_rows]
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    table = Table()
    for name in names:
        table.add_column(name)
    for row in result.result_rows:
        table.add_row(*[str(v) for v in row])
    console.print(table)


@app.command()
def broker(port: Annotated[int, typer.Option()] = 9092) -> None:
    """Run the bundled tansu broker in the foreground (memory storage) on 127.0.0.1:PORT."""
    from monitor.broker import broker_command

    command = broker_command(port)
    err.print(f"tansu on 127.0.0.1:{port} (memory storage; Ctrl-C stops it)")
    os.execv(command[0], command)  # noqa: S606 - replaces this process with the broker


@eval_app.command("pii")
def eval_pii(
    file: Annotated[
        Path, typer.Argument(help='JSONL: {"text", "spans": [{"start","end","type"}]}')
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object last")] = False,
) -> None:
    """Per-type precision/recall/F1 of the PII detector; Presidio type names are mapped."""
    from monitor.evaluation import evaluate_pii, load_labelled_jsonl

    try:
        rows = load_labelled_jsonl(file.open("rb"))
    except Exception as exc:
        _fail(MonitorError(f"{file}: not labelled JSONL ({exc})"))
        return
    report = evaluate_pii(rows).report()
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    table = Table(title=f"PII evaluation on {file} ({report['texts']} texts)")
    for column in ("type", "precision", "recall", "f1", "support"):
        table.add_column(column)
    for name, scores in report["per_type"].items():
        table.add_row(name, *[str(scores[c]) for c in ("precision", "recall", "f1", "support")])
    table.add_row(
        "micro", *[str(report["micro"][c]) for c in ("precision", "recall", "f1", "support")]
    )
    console.print(table)
    console.print(f"{report['texts_per_s']} texts/s")


JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object last")]
ModelDir = Annotated[
    Path | None, typer.Option(help="local embedding model directory (default: MiniLM)")
]


def _print_report(report: dict[str, Any], as_json: bool, title: str) -> None:
    """A binary report: one JSON line (the last thing printed), or a table."""
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    table = Table(title=title)
    for key in report:
        table.add_column(key)
    table.add_row(*[str(v) for v in report.values()])
    console.print(table)


@eval_app.command("toxicity")
def eval_toxicity(
    file: Annotated[Path, typer.Argument(help='JSONL: {"text", "label"} (1 = toxic)')],
    as_json: JsonFlag = False,
    model: ModelDir = None,
    classifier: Annotated[
        Path | None, typer.Option(help="local HF sequence-classification directory to use")
    ] = None,
) -> None:
    """ROC AUC and precision/recall/F1 at the shipped threshold of the toxicity detector."""
    from detectors.embedding import EmbeddingService
    from detectors.local_models import SequenceClassifier
    from detectors.toxicity import ToxicityDetector

    def build() -> ToxicityDetector:
        local = SequenceClassifier(classifier) if classifier else None
        return ToxicityDetector(EmbeddingService(model).start(), classifier=local)

    _eval_text_detector(file, as_json, build)


class _TextScorer(Protocol):
    threshold: float

    def score_texts(self, texts: Sequence[str]) -> Iterable[float]: ...


def _eval_text_detector(file: Path, as_json: bool, build: Callable[[], _TextScorer]) -> None:
    """Score ``{"text", "label"}`` lines with a detector and print the binary report."""
    from monitor.evaluation_binary import binary_report, load_samples

    try:
        samples = load_samples(file.open("rb"))
    except (OSError, ValueError) as exc:
        _fail(MonitorError(f"{file}: not labelled JSONL ({exc})"))
        return
    detector = build()
    started = time.perf_counter()
    scores = [float(x) for x in detector.score_texts([s.text for s in samples])]
    seconds = time.perf_counter() - started
    labels = [s.label for s in samples]
    report = binary_report(labels, scores, detector.threshold, seconds)
    negatives = [x for x, y in zip(scores, labels, strict=True) if y == 0]
    if negatives:
        flagged = sum(1 for x in negatives if x >= detector.threshold)
        err.print(
            f"false-positive rate: {flagged / len(negatives):.4f} ({flagged}/{len(negatives)})"
        )
    _print_report(report, as_json, title=str(file))


@eval_app.command("injection")
def eval_injection(
    file: Annotated[Path, typer.Argument(help='JSONL: {"text", "label"} (1 = injection)')],
    as_json: JsonFlag = False,
    model: ModelDir = None,
) -> None:
    """ROC AUC and precision/recall/F1 of the injection detector; false-positive rate on stderr."""
    from detectors.embedding import EmbeddingService
    from detectors.injection import InjectionDetector

    _eval_text_detector(file, as_json, lambda: InjectionDetector(EmbeddingService(model).start()))


@eval_app.command("hallucination")
def eval_hallucination(
    file: Annotated[
        Path,
        typer.Argument(help='JSONL: {"response", "context": [..] or "samples": [..], "label"}'),
    ],
    as_json: JsonFlag = False,
    model: ModelDir = None,
    nli: Annotated[Path | None, typer.Option(help="local NLI cross-encoder directory")] = None,
) -> None:
    """ROC AUC and precision/recall/F1 of the hallucination detector (1 = hallucinated)."""
    from detectors.embedding import EmbeddingService
    from detectors.hallucination import HallucinationDetector
    from detectors.local_models import NliScorer
    from monitor.evaluation_binary import LabelledResponse, binary_report, load_samples

    try:
        rows = load_samples(file.open("rb"), LabelledResponse)
    except (OSError, ValueError) as exc:
        _fail(MonitorError(f"{file}: not labelled JSONL ({exc})"))
        return
    detector = HallucinationDetector(
        EmbeddingService(model).start(), nli=NliScorer(nli) if nli else None
    )
    started = time.perf_counter()
    labels, scores, flagged, modes = [], [], [], set()
    for row in rows:
        support = detector.support(
            row.response, context=row.context, samples=row.samples, prompt=row.prompt
        )
        if support is None:
            _fail(MonitorError(f"{file}: a line has neither context nor samples, or no response"))
            return
        labels.append(row.label)
        scores.append(support.score)
        flagged.append(support.score >= detector.thresholds[support.mode])
        modes.add(support.mode)
    seconds = time.perf_counter() - started
    threshold = detector.thresholds[modes.pop()] if len(modes) == 1 else None  # mixed modes
    report = binary_report(labels, scores, threshold, seconds, flagged)
    _print_report(report, as_json, title=f"hallucination on {file}")


WorkerUrl = Annotated[
    str, typer.Option("--url", help="a worker running the policy role (its metrics port)")
]
TOKEN_ENV = "LLM_MONITOR_POLICY__API_TOKEN"  # noqa: S105 - a variable's name, not a secret
SECRET_ENV = "LLM_MONITOR_POLICY__WEBHOOK_SECRET"  # noqa: S105 - likewise
GRAFANA_TOKEN_ENV = "GRAFANA_TOKEN"  # noqa: S105 - likewise
TokenEnv = Annotated[
    str, typer.Option(help="environment variable holding the API token (never printed)")
]


def _killswitch_call(method: str, url: str, token_env: str, body: dict[str, str] | None) -> None:
    import httpx

    token = os.environ.get(token_env)
    if not token:
        _fail(MonitorError(f"set {token_env} to the kill-switch API token"))
        return
    try:
        response = httpx.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=15
        )
    except httpx.HTTPError as exc:
        _fail(MonitorError(f"{url}: {exc}"))
        return
    if response.status_code >= 400:
        _fail(MonitorError(f"{url}: HTTP {response.status_code} {response.text.strip()}"))
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
        settings = _settings(data_dir)
        text = build(connect(settings.storage_dsn), settings.storage.database, incident_id)
    except MonitorError as exc:
        _fail(exc)
        return
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


@policy_app.command("check")
def policy_check(file: Annotated[Path, typer.Argument(help="policy YAML")]) -> None:
    """Validate a policy file; errors name the field and the fix."""
    from monitor.policy.config import load_policy

    try:
        policy = load_policy(file)
    except MonitorError as exc:
        _fail(exc)
        return
    hooks = policy.webhooks
    console.print(
        f"{file}: valid. stages {[s.name for s in policy.stages]}, min_samples "
        f"{policy.min_samples}, confidence {policy.confidence}, dry_run {policy.dry_run}, "
        f"webhooks rollback {len(hooks.rollback)} kill {len(hooks.kill)} resume "
        f"{len(hooks.resume)}"
    )


@app.command()
def receiver(
    port: Annotated[int, typer.Option()] = 9095,
    secret_env: Annotated[
        str, typer.Option(help="variable holding the webhook secret")
    ] = SECRET_ENV,
) -> None:
    """Run the reference webhook receiver on 127.0.0.1:PORT, verifying signatures."""
    from monitor.policy.receiver import Receiver
    from monitor.policy.signing import Verifier

    secret = os.environ.get(secret_env, "")
    if not secret:
        _fail(MonitorError(f"set {secret_env} to the webhook secret"))
    r = Receiver(Verifier(secret.encode()))
    url = r.serve(port)
    err.print(f"receiver on {url} (POST /rollback, /kill, /resume; /alertmanager unsigned)")
    seen = 0
    try:
        while True:
            time.sleep(0.5)
            for d in r.deliveries[seen:]:
                console.print(f"{d.event} {d.idempotency_key} verified")
            seen = len(r.deliveries)
    except KeyboardInterrupt:
        r.stop()


@deploy_app.command("kubernetes")
def deploy_kubernetes(
    deploy_dir: Annotated[Path, typer.Option(help="the repo's deploy/ folder")] = Path("deploy"),
) -> None:
    """Write deploy/kubernetes/ (a Deployment, Service, PDB and HPA per role)."""
    from monitor.kubernetes import write

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
        _fail(MonitorError(f"set {token_env} to a Grafana service-account token"))
        return
    try:
        for uid, version in push_all(url, token, folder):
            console.print(f"pushed {uid} (version {version})")
    except MonitorError as exc:
        _fail(exc)


@bench_app.command("reaction")
def bench_reaction(
    incidents: Annotated[int, typer.Option(min=1)] = 50,
    spacing_s: Annotated[float, typer.Option(help="seconds between incident starts")] = 1.0,
    settle_s: Annotated[float, typer.Option(help="wait for the slowest path")] = 75.0,
    as_json: JsonFlag = False,
) -> None:
    """Policy engine vs Prometheus + Alertmanager reaction time on the same incidents."""
    from bench.reaction import main as reaction

    args = ["--incidents", str(incidents), "--spacing-s", str(spacing_s)]
    reaction([*args, "--settle-s", str(settle_s), *(["--json"] if as_json else [])])


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    del started
    app()


if __name__ == "__main__":
    main()
