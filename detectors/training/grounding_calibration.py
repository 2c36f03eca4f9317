"""The grounding adapter's shipped settings, chosen the way the detector scores answers:
``python -m detectors.training.grounding --recalibrate DIR``.

- **novelty weight**: the share of word novelty mixed into 1 − P(supported), the one of
  ``WEIGHTS`` with the best mean AUC over the five sets on a sample of *training* pairs;
- **threshold**: the held-out pairs are halved (seeded): the threshold flags ``TARGET_FPR`` of
  the supported claims of the first half, scored as the detector scores a response (its least
  supported sentence against the evidence). Reported: per set on the second half, AUC, recall
  and the false-positive rate on supported claims; HaluEval QA rows 250–499 as events (right
  and hallucinated answers with their passage); TruthfulQA self-consistency (each question's
  other correct answers as samples).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.adapted import AdaptedClassifier
from detectors.embedding import EmbeddingService
from detectors.evaluation.benign import HALUEVAL_SPLIT
from detectors.evaluation.sets import halueval_lines, truthfulqa_lines
from detectors.hallucination import GroundingModel, HallucinationDetector
from detectors.training.grounding_data import Claim, load
from detectors.training.sampling import auc, capped, held_out_split

TARGET_FPR = 0.015
WEIGHTS = (0.0, 0.25, 0.5)
EVIDENCE_CHARS = 1500


def claim_line(claim: Claim) -> dict[str, Any]:
    """A pair as the detector sees an event: the claim is the response, the evidence its context."""
    return {"prompt": "", "response": claim.claim, "context": [claim.evidence[:EVIDENCE_CHARS]],
            "label": 1 - claim.label}  # fmt: skip


def event_scores(detector: HallucinationDetector, lines: Sequence[dict[str, Any]]) -> np.ndarray:
    out = []
    for line in lines:
        support = detector.support(
            line["response"], context=line.get("context", ()), samples=line.get("samples", ()),
            prompt=line["prompt"],
        )  # fmt: skip
        out.append(support.score if support is not None else 0.0)
    return np.asarray(out, dtype=np.float64)


def rates(lines: Sequence[dict[str, Any]], scores: np.ndarray, threshold: float) -> dict[str, Any]:
    labels = [int(line["label"]) for line in lines]
    flagged = scores >= threshold
    positives = [f for f, y in zip(flagged, labels, strict=True) if y == 1]
    negatives = [f for f, y in zip(flagged, labels, strict=True) if y == 0]
    return {
        "n": len(lines), "auc": auc(labels, scores.tolist()),
        "recall": round(float(np.mean(positives)), 4) if positives else None,
        "false_positive_rate": round(float(np.mean(negatives)), 4) if negatives else None,
    }  # fmt: skip


def per_set(claims: Sequence[Claim], scores: np.ndarray, threshold: float) -> dict[str, Any]:
    lines = [claim_line(c) for c in claims]
    return {
        source: rates([lines[i] for i in idx], scores[idx], threshold)
        for source in sorted({c.source for c in claims})
        for idx in [[i for i, c in enumerate(claims) if c.source == source]]
    }


def calibrate_events(directory: Path, root: Path, device: str, seed: int = 0) -> dict[str, Any]:
    """The novelty weight, the event threshold and their figures for the adapter."""
    model = GroundingModel(AdaptedClassifier(directory, device=device))
    detector = HallucinationDetector(EmbeddingService(device="cpu"), nli=model)
    claims = load(root / "hallucination")
    train_claims, held = held_out_split(claims, seed)
    sample = capped(train_claims, 120, seed + 7)
    chosen = {}
    for weight in WEIGHTS:
        model.novelty_weight = weight
        scores = event_scores(detector, [claim_line(c) for c in sample])
        aucs = [v["auc"] for v in per_set(sample, scores, 0.5).values() if v["auc"] is not None]
        chosen[weight] = float(np.mean(aucs))
    model.novelty_weight = max(chosen, key=chosen.__getitem__)
    rng = np.random.default_rng(seed)
    first = rng.random(len(held)) < 0.5
    scores = event_scores(detector, [claim_line(c) for c in held])
    benign = scores[first & np.array([c.label == 1 for c in held])]
    threshold = round(float(np.quantile(benign, 1 - TARGET_FPR)), 3)
    report_half = [c for c, f in zip(held, first, strict=True) if not f]
    rows = [json.loads(line) for line in
            (root / "hallucination" / "halueval_qa_one-turn_data.jsonl").read_text().splitlines()
            if line.strip()]  # fmt: skip
    halueval = halueval_lines(rows[HALUEVAL_SPLIT : 2 * HALUEVAL_SPLIT])
    truthfulqa = truthfulqa_lines(root / "hallucination" / "TruthfulQA.csv")
    return {
        "novelty_weight": model.novelty_weight,
        "weight_mean_auc_on_training_pairs": {str(k): round(v, 4) for k, v in chosen.items()},
        "event_threshold": threshold, "target_fpr": TARGET_FPR,
        "held_out_second_half": per_set(report_half, scores[~first], threshold),
        "halueval_events_rows_250_499": rates(halueval, event_scores(detector, halueval),
                                              threshold),
        "truthfulqa_self_consistency": rates(truthfulqa, event_scores(detector, truthfulqa),
                                             threshold),
    }  # fmt: skip
