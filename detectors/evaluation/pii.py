"""Span-level evaluation of the PII scanner against labelled JSONL.

Input lines: ``{"text": str, "spans": [{"start": int, "end": int, "type": str}]}`` with
end-exclusive offsets; ``type`` is ours (EMAIL, PHONE, ...) or Presidio's (EMAIL_ADDRESS,
PHONE_NUMBER, ...). A prediction is a true positive when it has the same type as a gold span
and their character intersection-over-union is at least ``min_iou``. Types we do not cover are
reported with their support and null scores.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from detectors.pii import PiiScanner, PiiType, normalise_type


class GoldSpan(msgspec.Struct, frozen=True):
    start: int
    end: int
    type: str


class LabelledText(msgspec.Struct, frozen=True):
    text: str
    spans: list[GoldSpan] = msgspec.field(default_factory=list)


@dataclass
class TypeCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    support: int = 0
    covered: bool = True

    def as_dict(self) -> dict[str, Any]:
        if not self.covered:
            return {"precision": None, "recall": None, "f1": None, "support": self.support}
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": self.support,
        }


@dataclass
class PiiEvaluation:
    per_type: dict[str, TypeCounts] = field(default_factory=dict)
    texts: int = 0
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        micro = TypeCounts()
        for counts in self.per_type.values():
            if counts.covered:
                micro.tp += counts.tp
                micro.fp += counts.fp
                micro.fn += counts.fn
                micro.support += counts.support
        return {
            "per_type": {name: c.as_dict() for name, c in sorted(self.per_type.items())},
            "micro": micro.as_dict(),
            "texts": self.texts,
            "texts_per_s": round(self.texts / self.seconds, 1) if self.seconds else None,
        }


def _iou(a_start: int, a_end: int, b_start: int, b_end: int) -> float:
    inter = min(a_end, b_end) - max(a_start, b_start)
    if inter <= 0:
        return 0.0
    return inter / (max(a_end, b_end) - min(a_start, b_start))


def evaluate_pii(
    rows: Iterable[LabelledText], scanner: PiiScanner | None = None, *, min_iou: float = 0.5
) -> PiiEvaluation:
    """Scan every text, match predictions to gold spans per type, and time the scanning."""
    scanner = scanner or PiiScanner()
    result = PiiEvaluation()
    rows = list(rows)
    names: dict[PiiType, str] = {}
    for row in rows:
        for span in row.spans:
            ours = normalise_type(span.type)
            if ours is not None:
                names.setdefault(ours, span.type.upper())
            counts = result.per_type.setdefault(span.type.upper(), TypeCounts())
            counts.support += 1
            counts.covered = ours is not None and ours in scanner.types
    for ours in scanner.types:
        names.setdefault(ours, ours.value)

    started = time.perf_counter()
    predictions = [scanner.scan(row.text) for row in rows]
    result.seconds = time.perf_counter() - started
    result.texts = len(rows)

    for row, predicted in zip(rows, predictions, strict=True):
        gold = [(s, names.get(normalise_type(s.type) or PiiType.SECRET)) for s in row.spans]
        matched_gold: set[int] = set()
        for match in predicted:
            name = names[match.type]
            counts = result.per_type.setdefault(name, TypeCounts())
            hit = next(
                (
                    i
                    for i, (g, _) in enumerate(gold)
                    if i not in matched_gold
                    and g.type.upper() == name
                    and _iou(match.start, match.end, g.start, g.end) >= min_iou
                ),
                None,
            )
            if hit is None:
                counts.fp += 1
            else:
                counts.tp += 1
                matched_gold.add(hit)
        for i, (g, _) in enumerate(gold):
            counts = result.per_type[g.type.upper()]
            if counts.covered and i not in matched_gold:
                counts.fn += 1
    return result


def load_labelled_jsonl(lines: Iterable[bytes | str]) -> list[LabelledText]:
    decoder = msgspec.json.Decoder(LabelledText)
    return [decoder.decode(line) for line in lines if line.strip()]


def presidio_synth_rows(records: list[dict[str, Any]]) -> list[LabelledText]:
    """Convert presidio-research's synth dataset records to LabelledText."""
    return [
        LabelledText(
            text=r["full_text"],
            spans=[
                GoldSpan(s["start_position"], s["end_position"], s["entity_type"])
                for s in r["spans"]
            ],
        )
        for r in records
    ]
