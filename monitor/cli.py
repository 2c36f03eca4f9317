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


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    del started
    app()


if __name__ == "__main__":
    main()
