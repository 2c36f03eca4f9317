"""Train the shipped grounding adapter: ``python -m detectors.training.grounding``.

The model: the packaged MiniLM as a cross-encoder, fine-tuned with LoRA adapters and a
one-logit head (detectors/training/adapter.py) on (evidence, claim) pairs: P(the evidence
supports the claim). The hallucination detector asks it about every response sentence against
the context (chunked), and, for self-consistency, against each other sampled answer
(SelfCheckGPT-NLI). Data: every trainable set under ``EVAL_DIR/hallucination`` at once
(detectors/training/grounding_data.py: e-SNLI, SummEdits, BEGIN, FaithDial, DialFact), each
capped per class. A seeded 20 % of each set is held out and reported; ``--leave-out SET``
trains without SET and reports on all of it (the leave-one-dataset-out table in
docs/detectors.md). Seeded. The pair threshold on unsupported = 1 − P(supported) that
maximises F1 on the held-out pairs is reported; the shipped one is chosen on whole answers for
a stated false-positive rate (detectors/training/grounding_calibration.py, ``--recalibrate``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.training.adapter import Example, TrainConfig, Trained, train
from detectors.training.grounding_data import TRAINABLE, Claim, load
from detectors.training.sampling import auc, capped, held_out_split

ARTIFACT = Path(__file__).resolve().parents[1] / "assets" / "grounding"
EVIDENCE_CHARS = 1500  # about what fits 256 tokens beside a claim; the detector chunks longer


def example(claim: Claim) -> Example:
    return Example(claim.claim, claim.label, claim.evidence[:EVIDENCE_CHARS])


def unsupported(model: Trained, claims: Sequence[Claim]) -> np.ndarray:
    """1 − P(supported): the score the detector flags on, per pair."""
    logits = model.logits([example(c) for c in claims])[:, 0]
    return np.asarray(1.0 - 1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)


def best_threshold(labels: Sequence[int], scores: np.ndarray) -> float:
    """The unsupported-score threshold maximising F1 for "not supported" (label 0)."""
    from sklearn.metrics import f1_score

    positives = [1 - y for y in labels]
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    return float(max(grid, key=lambda t: f1_score(positives, scores >= t, zero_division=0)))


def report_sets(model: Trained, claims: Sequence[Claim], threshold: float) -> dict[str, Any]:
    """AUC (unsupported vs label 0) and flag rates per set."""
    scores = unsupported(model, claims)
    out: dict[str, Any] = {}
    for source in sorted({c.source for c in claims}):
        idx = [i for i, c in enumerate(claims) if c.source == source]
        labels = [1 - claims[i].label for i in idx]  # 1 = hallucinated
        flagged = [bool(scores[i] >= threshold) for i in idx]
        hits = [f for f, y in zip(flagged, labels, strict=True) if y == 1]
        false = [f for f, y in zip(flagged, labels, strict=True) if y == 0]
        out[source] = {
            "auc": auc(labels, [float(scores[i]) for i in idx]), "n": len(idx),
            "recall": round(sum(hits) / len(hits), 4) if hits else None,
            "false_positive_rate": round(sum(false) / len(false), 4) if false else None,
        }  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=ARTIFACT)
    parser.add_argument("--leave-out", choices=TRAINABLE, default=None)
    parser.add_argument("--per-class", type=int, default=2500, help="pairs per set and label")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument(
        "--recalibrate", type=Path, default=None,
        help="a saved adapter: choose its event threshold on benign answers, no training",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.recalibrate is not None:
        recalibrate(args.recalibrate, eval_dir(args.eval_dir), args.device)
        return
    claims = load(eval_dir(args.eval_dir) / "hallucination")
    trainable = [c for c in claims if c.source != args.leave_out]
    train_claims, held = held_out_split(trainable, args.seed)
    picked = capped(train_claims, args.per_class, args.seed)
    config = TrainConfig(labels=("supported",), epochs=args.epochs, seed=args.seed,
                         device=args.device, max_length=args.max_length)  # fmt: skip
    print(f"training on {len(picked)} pairs ({', '.join(sorted({c.source for c in picked}))})")
    started = time.perf_counter()
    model = train([example(c) for c in picked], config)
    seconds = round(time.perf_counter() - started)
    threshold = round(best_threshold([c.label for c in held], unsupported(model, held)), 2)
    unseen = [c for c in claims if c.source == args.leave_out]
    report = {
        "threshold": threshold, "train_pairs": len(picked), "train_seconds": seconds,
        "held_out_splits": report_sets(model, held, threshold),
        "unseen_sets": report_sets(model, unseen, threshold) if unseen else {},
        "leave_out": args.leave_out, "per_class": args.per_class, "epochs": args.epochs,
        "max_length": args.max_length, "seed": args.seed,
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    if args.leave_out is None:
        metadata = {"name": "grounding", "data": sorted(TRAINABLE), "figures": report,
                    "licences": "see detectors/training/grounding_data.py"}  # fmt: skip
        model.save(args.out, {"unsupported": threshold}, metadata)
        print(f"adapter written to {args.out}")
        recalibrate(args.out, eval_dir(args.eval_dir), args.device)


def recalibrate(directory: Path, root: Path, device: str) -> None:
    """Choose a saved adapter's novelty weight and event threshold (TARGET_FPR on supported
    claims: detectors/training/grounding_calibration.py); its weights are unchanged."""
    from detectors.adapted import AdapterSpec
    from detectors.training.grounding_calibration import calibrate_events

    spec = AdapterSpec.read(directory)
    figures = calibrate_events(directory, root, device)
    metadata = {**spec.metadata, "event_calibration": figures,
                "novelty_weight": figures["novelty_weight"]}  # fmt: skip
    AdapterSpec(spec.labels, spec.rank, spec.alpha, spec.max_length,
                {"unsupported": figures["event_threshold"]}, metadata).write(directory)  # fmt: skip
    print(json.dumps(figures, indent=1))
    print(f"event threshold {figures['event_threshold']} written to {directory}")


if __name__ == "__main__":
    main()
