"""Evaluation of score-based detectors (toxicity, injection, hallucination) on labelled JSONL.

Lines are ``{"text": str, "label": 0 | 1}`` (1 = positive). The report is what an analyst
compares across detector versions: ranking quality (ROC AUC, threshold-free), precision,
recall and F1 at the detector's own decision threshold, and the false-positive rate on the
negatives. With a category field (``--by FIELD``), the same report per category.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import msgspec


class LabelledSample(msgspec.Struct, frozen=True):
    """A text and its label; ``context`` (e.g. the prompt a reply answers), where a detector
    judges texts in their context."""

    text: str
    label: int
    context: str = ""


class LabelledResponse(msgspec.Struct, frozen=True):
    """A hallucination evaluation line: a response and what it should agree with."""

    response: str
    label: int
    context: list[str] = msgspec.field(default_factory=list)
    samples: list[str] = msgspec.field(default_factory=list)
    prompt: str = ""


Line = TypeVar("Line", LabelledSample, LabelledResponse)


def load_samples(lines: Iterable[bytes | str], kind: type[Line] = LabelledSample) -> list[Line]:  # type: ignore[assignment]
    """Decode JSONL lines; a bad line raises with its line number."""
    decoder = msgspec.json.Decoder(kind)
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sample = decoder.decode(line)
        except msgspec.ValidationError as exc:
            raise ValueError(f"line {number}: {exc}") from exc
        if sample.label not in (0, 1):
            raise ValueError(f"line {number}: label must be 0 or 1, got {sample.label}")
        samples.append(sample)
    return samples


def binary_report(
    labels: Sequence[int],
    scores: Sequence[float],
    threshold: float | None,
    seconds: float,
    flagged: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """AUC (null when only one class is present) and P/R/F1 at ``threshold`` (or of the
    detector's own ``flagged`` decisions, when its threshold differs per line)."""
    from sklearn.metrics import roc_auc_score

    n = len(labels)
    if flagged is None:
        if threshold is None:
            raise ValueError("binary_report needs a threshold or the flagged decisions")
        flagged = [s >= threshold for s in scores]
    tp = sum(1 for f, y in zip(flagged, labels, strict=True) if f and y == 1)
    fp = sum(1 for f, y in zip(flagged, labels, strict=True) if f and y == 0)
    fn = sum(1 for f, y in zip(flagged, labels, strict=True) if not f and y == 1)
    negatives = sum(1 for y in labels if y == 0)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = float(roc_auc_score(list(labels), list(scores))) if len(set(labels)) == 2 else None
    return {
        "auc": None if auc is None else round(auc, 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "threshold": None if threshold is None else round(threshold, 4),
        "false_positive_rate": round(fp / negatives, 4) if negatives else None,
        "n": n,
        "texts_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }


def categories(lines: Sequence[bytes | str], field: str) -> list[str]:
    """The value of ``field`` on every non-blank line ("" where a line lacks it)."""
    out = []
    for line in lines:
        if line.strip():
            value = json.loads(line).get(field, "")
            out.append(value if isinstance(value, str) else json.dumps(value))
    return out


def report_by(
    field: str,
    groups: Sequence[str],
    labels: Sequence[int],
    scores: Sequence[float],
    flagged: Sequence[bool],
) -> dict[str, Any]:
    """``{"field", "groups": {value: report}}``: the binary report of each category's lines."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return {
        "field": field,
        "groups": {
            group: binary_report(
                [labels[i] for i in rows], [scores[i] for i in rows], None, 0.0,
                [flagged[i] for i in rows],
            )
            for group, rows in sorted(members.items())
        },
    }  # fmt: skip
