"""PII quality and speed on presidio-research's synthetic dataset, next to Presidio itself.

Run: ``make bench`` or ``.venv/bin/python -m bench.pii``. Both sides see the same texts in the
same process. Presidio runs its pattern recognizers for the same six types (no spaCy NER:
those types are pattern-based in Presidio too, and no NER model can be downloaded here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from detectors.evaluation.data import eval_dir
from detectors.evaluation.pii import (
    PiiEvaluation,
    TypeCounts,
    _iou,
    evaluate_pii,
    presidio_synth_rows,
)
from detectors.pii import PiiScanner

DATASET = eval_dir() / "pii" / "presidio_synth_dataset_v2.json"
TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS")


def presidio_recognizers() -> list[Any]:
    import tldextract
    import tldextract.tldextract

    # Offline: use tldextract's bundled public-suffix snapshot instead of fetching the list.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    return [
        EmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        UsSsnRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
    ]


def evaluate_presidio(records: list[dict[str, Any]], threshold: float = 0.0) -> PiiEvaluation:
    """Presidio's AnalyzerEngine default score threshold is 0: every recognizer result counts."""
    recognizers = presidio_recognizers()
    result = PiiEvaluation()
    texts = [r["full_text"] for r in records]
    for recognizer in recognizers:  # warm-up, outside the timed loop
        recognizer.analyze(texts[0], recognizer.supported_entities, None)
    started = time.perf_counter()
    predictions = []
    for text in texts:
        found = []
        for recognizer in recognizers:
            found.extend(recognizer.analyze(text, recognizer.supported_entities, None))
        predictions.append([f for f in found if f.score >= threshold])
    result.seconds = time.perf_counter() - started
    result.texts = len(texts)
    for record, predicted in zip(records, predictions, strict=True):
        gold = [s for s in record["spans"] if s["entity_type"] in TYPES]
        for name in TYPES:
            result.per_type.setdefault(name, TypeCounts())
        for s in record["spans"]:
            if s["entity_type"] in TYPES:
                result.per_type[s["entity_type"]].support += 1
        matched: set[int] = set()
        for p in predicted:
            if p.entity_type not in TYPES:
                continue
            hit = next(
                (
                    i
                    for i, g in enumerate(gold)
                    if i not in matched
                    and g["entity_type"] == p.entity_type
                    and _iou(p.start, p.end, g["start_position"], g["end_position"]) >= 0.5
                ),
                None,
            )
            if hit is None:
                result.per_type[p.entity_type].fp += 1
            else:
                result.per_type[p.entity_type].tp += 1
                matched.add(hit)
        for i, g in enumerate(gold):
            if i not in matched:
                result.per_type[g["entity_type"]].fn += 1
    return result


def median_texts_per_s(scan_all: Callable[[], object], n: int, repeats: int) -> float:
    """Texts/s of the median of ``repeats`` full passes (one pass of 1,500 short texts takes
    tens of milliseconds here, too short for a single timing to be stable)."""
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        scan_all()
        runs.append(time.perf_counter() - started)
    return n / statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description="PII quality and speed vs Presidio")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per side")
    args = parser.parse_args()
    if not DATASET.is_file():
        print(f"skipped: {DATASET} not found (set LLM_MONITOR_EVAL_DIR to the labelled data root)")
        return
    records = json.loads(DATASET.read_text())
    evaluate_pii(presidio_synth_rows(records[:50]))  # warm-up
    ours = evaluate_pii(presidio_synth_rows(records)).report()
    theirs = evaluate_presidio(records).report()
    print(f"dataset: {DATASET.name}, {len(records)} texts")
    print(f"{'type':<14}{'ours P/R/F1':>24}{'presidio P/R/F1':>26}{'support':>9}")
    for name in TYPES:
        a, b = ours["per_type"][name], theirs["per_type"][name]
        print(
            f"{name:<14}{a['precision']:>8.3f}{a['recall']:>8.3f}{a['f1']:>8.3f}"
            f"{b['precision']:>10.3f}{b['recall']:>8.3f}{b['f1']:>8.3f}{a['support']:>9}"
        )
    texts = [r["full_text"] for r in records]
    scanner, recognizers = PiiScanner(), presidio_recognizers()
    ours["texts_per_s"] = round(
        median_texts_per_s(lambda: [scanner.scan(t) for t in texts], len(texts), args.repeats), 1
    )
    theirs["texts_per_s"] = round(median_texts_per_s(
        lambda: [[r.analyze(t, r.supported_entities, None) for r in recognizers] for t in texts],
        len(texts), args.repeats), 1)  # fmt: skip
    speedup = ours["texts_per_s"] / theirs["texts_per_s"]
    print(f"texts/s: ours {ours['texts_per_s']:,.0f}, presidio {theirs['texts_per_s']:,.0f}, "
          f"ratio {speedup:.1f}x (median of {args.repeats} passes each)")  # fmt: skip
    summary = {
        "ours": {t: ours["per_type"][t] for t in TYPES},
        "presidio": {t: theirs["per_type"][t] for t in TYPES},
        "ours_texts_per_s": ours["texts_per_s"],
        "presidio_texts_per_s": theirs["texts_per_s"],
        "speedup": round(speedup, 1),
        # the headline figures under short names: our speed, the ratio, our F1 per type
        "texts_per_s": ours["texts_per_s"],
        "ratio": round(speedup, 1),
        "f1": {t: ours["per_type"][t]["f1"] for t in TYPES},
    }
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
