"""``llm-monitor eval``: measure a detector on labelled data."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

import typer
from rich.table import Table

from monitor.cli.common import ByField, JsonFlag, ModelDir, console, err, fail, print_report
from monitor.errors import MonitorError

if TYPE_CHECKING:
    from detectors.injection import InjectionDetector

eval_app = typer.Typer(no_args_is_help=True, help="Measure a detector on labelled data.")


@eval_app.command("pii")
def eval_pii(
    file: Annotated[
        Path, typer.Argument(help='JSONL: {"text", "spans": [{"start","end","type"}]}')
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object last")] = False,
) -> None:
    """Per-type precision/recall/F1 of the PII detector; Presidio type names are mapped."""
    from detectors.evaluation.pii import evaluate_pii, load_labelled_jsonl

    try:
        rows = load_labelled_jsonl(file.open("rb"))
    except Exception as exc:
        fail(MonitorError(f"{file}: not labelled JSONL ({exc})"))
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


@eval_app.command("toxicity")
def eval_toxicity(
    file: Annotated[Path, typer.Argument(help='JSONL: {"text", "label"} (1 = toxic)')],
    as_json: JsonFlag = False,
    model: ModelDir = None,
    classifier: Annotated[
        Path | None, typer.Option(help="local HF sequence-classification directory to use")
    ] = None,
    by: ByField = None,
) -> None:
    """ROC AUC and precision/recall/F1 at the shipped threshold of the toxicity detector."""
    from detectors.embedding import EmbeddingService
    from detectors.local_models import SequenceClassifier
    from detectors.toxicity import ToxicityDetector

    def build() -> ToxicityDetector:
        local = SequenceClassifier(classifier) if classifier else None
        return ToxicityDetector(EmbeddingService(model).start(), classifier=local)

    _eval_text_detector(file, as_json, build, by)


class _TextScorer(Protocol):
    threshold: float

    def score_texts(self, texts: Sequence[str]) -> Iterable[float]: ...


def _eval_text_detector(
    file: Path, as_json: bool, build: Callable[[], _TextScorer], by: str | None
) -> None:
    """Score ``{"text", "label"}`` lines (with ``"context"``: texts in their context, for the
    toxicity detector) and print the binary report."""
    from detectors.evaluation.binary import binary_report, categories, load_samples, report_by

    try:
        lines = file.read_bytes().splitlines()
        samples = load_samples(lines)
        groups = categories(lines, by) if by else None
    except (OSError, ValueError) as exc:
        fail(MonitorError(f"{file}: not labelled JSONL ({exc})"))
    detector = build()
    started = time.perf_counter()
    texts = [s.text for s in samples]
    from detectors.toxicity import ToxicityDetector

    if isinstance(detector, ToxicityDetector) and any(s.context for s in samples):
        scores = [float(x) for x in detector.score_texts(texts, [s.context for s in samples])]
    else:
        scores = [float(x) for x in detector.score_texts(texts)]
    seconds = time.perf_counter() - started
    labels = [s.label for s in samples]
    report = binary_report(labels, scores, detector.threshold, seconds)
    negatives = [x for x, y in zip(scores, labels, strict=True) if y == 0]
    if negatives:
        flagged_negatives = sum(1 for x in negatives if x >= detector.threshold)
        rate = flagged_negatives / len(negatives)
        err.print(f"false-positive rate: {rate:.4f} ({flagged_negatives}/{len(negatives)})")
    if by and groups is not None:
        flagged = [x >= detector.threshold for x in scores]
        report["by"] = report_by(by, groups, labels, scores, flagged)
    print_report(report, as_json, title=str(file))


@eval_app.command("injection")
def eval_injection(
    file: Annotated[Path, typer.Argument(help='JSONL: {"text", "label"} (1 = injection)')],
    as_json: JsonFlag = False,
    model: ModelDir = None,
    by: ByField = None,
    as_context: Annotated[
        bool,
        typer.Option(
            "--as-context",
            help="score each text as a context passage (indirect injection), not a prompt",
        ),
    ] = False,
) -> None:
    """ROC AUC, precision/recall/F1 and false-positive rate of the injection detector."""
    from detectors.embedding import EmbeddingService
    from detectors.injection import InjectionDetector

    def build() -> _TextScorer:
        detector = InjectionDetector.shipped(EmbeddingService(model).start())
        return _AsContext(detector) if as_context else detector

    _eval_text_detector(file, as_json, build, by)


class _AsContext:
    """The injection detector scoring texts as context passages."""

    def __init__(self, detector: InjectionDetector) -> None:
        self.detector = detector
        self.threshold = detector.threshold

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return self.detector.score_contexts(texts)


@eval_app.command("hallucination")
def eval_hallucination(
    file: Annotated[
        Path,
        typer.Argument(help='JSONL: {"response", "context": [..] or "samples": [..], "label"}'),
    ],
    as_json: JsonFlag = False,
    model: ModelDir = None,
    nli: Annotated[Path | None, typer.Option(help="local NLI cross-encoder directory")] = None,
    by: ByField = None,
) -> None:
    """ROC AUC and precision/recall/F1 of the hallucination detector (1 = hallucinated)."""
    from detectors.embedding import EmbeddingService
    from detectors.evaluation.binary import (
        LabelledResponse,
        binary_report,
        categories,
        load_samples,
        report_by,
    )
    from detectors.hallucination import HallucinationDetector
    from detectors.local_models import NliScorer

    try:
        lines = file.read_bytes().splitlines()
        rows = load_samples(lines, LabelledResponse)
        groups = categories(lines, by) if by else None
    except (OSError, ValueError) as exc:
        fail(MonitorError(f"{file}: not labelled JSONL ({exc})"))
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
            fail(MonitorError(f"{file}: a line has neither context nor samples, or no response"))
            return
        labels.append(row.label)
        scores.append(support.score)
        flagged.append(support.score >= detector.thresholds[support.mode])
        modes.add(support.mode)
    seconds = time.perf_counter() - started
    threshold = detector.thresholds[modes.pop()] if len(modes) == 1 else None  # mixed modes
    report = binary_report(labels, scores, threshold, seconds, flagged)
    if by and groups is not None:
        report["by"] = report_by(by, groups, labels, scores, flagged)
    print_report(report, as_json, title=f"hallucination on {file}")
