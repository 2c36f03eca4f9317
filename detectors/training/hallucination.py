"""Measure the shipped hallucination detector on answers that are right:
``python -m detectors.training.hallucination``.

The default detector (word novelty, thresholds in ``HallucinationDetector.THRESHOLD``) was
chosen on HaluEval rows 0–249, whose right answers copy the passage. What the policy needs is
how often it flags an answer that is *supported*, as real apps write them. Each set's
supported claims are scored as the detector scores an event (the claim is the response, its
evidence the context; for TruthfulQA a correct answer against the question's other correct
answers as samples):

- e-SNLI, SummEdits, BEGIN, FaithDial, DialFact: a seeded sample of at most ``PER_SET``
  supported claims each (detectors/training/grounding_data.py; none of them chose a setting);
- HaluEval rows 250–499: the right answers with their passage;
- TruthfulQA: one correct answer per question with its other correct answers as samples
  (self-consistency; that mode's embedding weight was chosen on TruthfulQA, so this one figure
  is not on unseen data).

Written to ``detectors/assets/hallucination.json``: the rate per set and their mean (each set
weighs the same: one set's size must not decide the figure), which ``llm-monitor policy check``
compares rate rules with (detectors/calibration.py). With a grounding model configured
(``adapter_path``, ``nli_model_path``) these figures do not apply: that model's own calibration
does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.embedding import EmbeddingService
from detectors.evaluation.benign import HALUEVAL_SPLIT, read_jsonl
from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.evaluation.sets import halueval_lines, truthfulqa_lines
from detectors.hallucination import HallucinationDetector
from detectors.training.grounding_calibration import claim_line, event_scores
from detectors.training.grounding_data import load

ARTIFACT = Path(__file__).resolve().parents[1] / "assets" / "hallucination.json"
PER_SET = 400
SUPPORTED = 0  # the ``label`` of an event line whose answer is right (1 = hallucinated)


def supported_events(root: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Per set, right answers as the detector sees events (``label`` 0)."""
    claims = [c for c in load(root / "hallucination") if c.label == 1]
    out: dict[str, list[dict[str, Any]]] = {}
    for source in sorted({c.source for c in claims}):
        rows = [c for c in claims if c.source == source]
        picked = np.random.default_rng(seed).permutation(len(rows))[:PER_SET]
        out[source] = [claim_line(rows[i]) for i in sorted(picked)]
    halueval = read_jsonl(root / "hallucination" / "halueval_qa_one-turn_data.jsonl")
    rows_250_499 = halueval_lines(halueval[HALUEVAL_SPLIT : 2 * HALUEVAL_SPLIT])
    out["halueval"] = [line for line in rows_250_499 if line["label"] == SUPPORTED]
    truthfulqa = truthfulqa_lines(root / "hallucination" / "TruthfulQA.csv")
    out["truthfulqa"] = [line for line in truthfulqa if line["label"] == SUPPORTED]
    return out


def false_positive_rates(
    detector: HallucinationDetector, sets: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Per set, the share of right answers flagged at the detector's threshold for its mode."""
    by_set: dict[str, Any] = {}
    for name, lines in sets.items():
        mode = "self_consistency" if lines and not lines[0].get("context") else "grounding"
        flagged = event_scores(detector, lines) >= detector.thresholds[mode]
        by_set[name] = {"n": len(lines), "mode": mode, "fpr": round(float(flagged.mean()), 4)}
    return by_set


def measure(root: Path, seed: int) -> dict[str, Any]:
    service = EmbeddingService(device="cpu").start()
    detector = HallucinationDetector(service, nli=None)
    by_set = false_positive_rates(detector, supported_events(root, seed))
    return {
        "thresholds": dict(detector.thresholds),
        "detector_version": detector.version,
        "held_out_fpr_by_set": by_set,
        "held_out_fpr_pooled": round(float(np.mean([v["fpr"] for v in by_set.values()])), 4),
        "pooling": "mean over sets",
        "seed": seed,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=ARTIFACT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = measure(eval_dir(args.eval_dir), args.seed)
    args.out.write_text(json.dumps({"metadata": report}, indent=1, sort_keys=True) + "\n")
    print(json.dumps(report, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
