"""Commands that run things: the demo, a worker, the bundled broker, traffic in."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.progress import Progress

from monitor.cli.common import DataDir, console, err, fail, request_id_of, settings_for
from monitor.errors import MonitorError
from monitor.ingest.formats import InputFormat

# The publisher's request limit is 4 MiB (monitor/client/bulk.py); a larger line cannot be sent,
# and the worker would refuse it as too_large anyway. Leave room for the record's overhead.
MAX_LINE_BYTES: Final = 4 * 1_048_576 - 64 * 1024
MAX_KEY_BYTES: Final = 1024


def read_lines(path: Path) -> list[bytes]:
    """The non-blank lines of a JSONL file; a line too large to publish is reported and left
    out (the broker would refuse it), never silently."""
    lines: list[bytes] = []
    skipped: list[int] = []
    try:
        with path.open("rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                if len(line) > MAX_LINE_BYTES:
                    skipped.append(number)
                    continue
                lines.append(line.rstrip(b"\n"))
    except OSError as exc:
        raise MonitorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        err.print(
            f"[yellow]warning:[/] left out {len(skipped)} line(s) over {MAX_LINE_BYTES} bytes, "
            f"the largest record the publisher sends: line {shown}"
        )
    return lines


def record_key(line: bytes) -> bytes:
    """The record key for a line: its request_id, or empty when the line has none usable (it
    is not an event, nests too deep to read, ...): the worker dead-letters such lines."""
    try:
        key = request_id_of(line)
    except Exception:  # e.g. RecursionError on deeply nested JSON
        return b""
    return key if len(key) <= MAX_KEY_BYTES else b""


def input_records(lines: list[bytes], input_format: InputFormat) -> list[tuple[bytes, bytes]]:
    """(key, value) records for the lines of an input file: events keyed by request_id, OTLP
    trace requests by their first trace id (as the Collector's ``partition_traces_by_id``)."""
    if input_format is InputFormat.OTLP_JSON:
        from monitor.ingest.otlp import record_key as otlp_key

        return [(otlp_key(line), line) for line in lines]
    return [(record_key(line), line) for line in lines]


InputFormatOption = Annotated[
    InputFormat,
    typer.Option(
        "--input-format",
        help="events: one event (JSON) a line; otlp-json: one OTLP/JSON trace request a line "
        "(the Collector's file exporter), read by the span ingest (docs/otlp.md)",
    ),
]


def demo(
    input: Annotated[
        Path | None, typer.Option(help="JSONL events instead of generated ones")
    ] = None,
    input_format: InputFormatOption = InputFormat.EVENTS,
    events: Annotated[int, typer.Option(help="generated events")] = 20_000,
    data_dir: DataDir = None,
    seed: Annotated[int, typer.Option()] = 7,
    semantic: Annotated[
        bool, typer.Option(help="run the embedding-backed detectors (the embed role)")
    ] = True,
) -> None:
    """Bundled broker + worker + generated traffic with incidents; prints a summary."""
    from monitor.devtools.demo import run_demo
    from monitor.devtools.generate import generate_events

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = settings_for(data_dir or Path("data"))
        if input is not None and input_format is InputFormat.OTLP_JSON:
            records = input_records(read_lines(input), input_format)
        elif input is not None:
            records = [(b"", line) for line in read_lines(input)]
        elif input_format is InputFormat.OTLP_JSON:
            raise MonitorError("--input-format otlp-json reads a file: pass --input FILE")
        else:
            records = list(generate_events(events, seed=seed))
        run_demo(settings, records, semantic=semantic, input_format=input_format)
    except MonitorError as exc:
        fail(exc)


def worker() -> None:
    """Run a long-lived worker for the roles in LLM_MONITOR_ROLES (default: all)."""
    import faust

    from monitor.config import ensure_data_dir
    from streams.app import app_id_for, create_app
    from streams.collector import tune_for_streaming
    from streams.topics import ensure_topics, pipeline_topics

    try:
        settings = settings_for()
        ensure_data_dir(settings)
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
        fail(exc)
        return
    tune_for_streaming()
    faust.Worker(
        faust_app, loglevel=settings.log_level.upper(), quiet=True
    ).execute_from_commandline()


def replay(
    file: Annotated[Path, typer.Argument(help="JSONL, one event per line")],
    topic: Annotated[
        str | None, typer.Option(help="default: the events topic (otlp-json: the spans topic)")
    ] = None,
    input_format: InputFormatOption = InputFormat.EVENTS,
) -> None:
    """Publish a JSONL file to the events topic (or OTLP/JSON lines to the spans topic), line
    by line, as raw bytes."""
    from monitor.client import produce

    try:
        settings = settings_for()
        if not settings.kafka.bootstrap_servers:
            raise MonitorError("set KAFKA_BOOTSTRAP_SERVERS to the broker to replay into")
        default_topic = settings.kafka.events_topic
        if input_format is InputFormat.OTLP_JSON:
            default_topic = settings.kafka.otlp_spans_topic
            if not (topic or default_topic):
                raise MonitorError(
                    "kafka.otlp_spans_topic is empty (span ingest off); pass --topic"
                )
        keyed = input_records(read_lines(file), input_format)
        with Progress(console=err) as bar:
            task = bar.add_task(f"replaying {file.name}", total=len(keyed))

            def records() -> Any:
                for key, line in keyed:
                    bar.advance(task)
                    yield key, line

            sent = asyncio.run(
                produce(settings.kafka.bootstrap_servers, topic or default_topic, records())
            )
        console.print(f"sent {sent} records")
    except MonitorError as exc:
        fail(exc)


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
    from monitor.client import produce
    from monitor.devtools.probe import ProbeTarget, run_probes

    try:
        settings = settings_for()
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
        records = [(request_id_of(e), e) for e in events]
        asyncio.run(produce(str(settings.kafka.bootstrap_servers), topic, records))
        console.print(f"published {len(events)} probe events to {topic} ({failed} failed)")
    except MonitorError as exc:
        fail(exc)


def generate(
    events: Annotated[int, typer.Option(help="number of records")] = 1000,
    seed: Annotated[int, typer.Option()] = 7,
    duration_s: Annotated[float, typer.Option(help="event-time span in seconds")] = 600.0,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="default: stdout")] = None,
) -> None:
    """Write synthetic traffic with seeded incidents (and ~1% malformed records) as JSONL."""
    from monitor.devtools.generate import generate_events

    out = output.open("wb") if output else sys.stdout.buffer
    try:
        for _, value in generate_events(events, seed=seed, duration_s=duration_s):
            out.write(value.replace(b"\n", b" ") + b"\n")
    finally:
        if output:
            out.close()


def broker(port: Annotated[int, typer.Option()] = 9092) -> None:
    """Run the bundled tansu broker in the foreground (memory storage) on 127.0.0.1:PORT."""
    from monitor.devtools.broker import broker_command

    command = broker_command(port)
    err.print(f"tansu on 127.0.0.1:{port} (memory storage; Ctrl-C stops it)")
    os.execv(command[0], command)  # noqa: S606 - replaces this process with the broker
