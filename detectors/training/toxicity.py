"""Train the shipped toxicity adapter: ``python -m detectors.training.toxicity``.

The model: the packaged MiniLM, fine-tuned with LoRA adapters and a one-logit head
(detectors/training/adapter.py), judging a text on its own or a reply in its context (the
event's prompt). Data: every trainable set under ``EVAL_DIR/toxicity`` at once
(detectors/training/toxicity_data.py: ToxiGen, Stormfront, TweetEval hate and offensive,
DiaSafety replies in their context, ConvAbuse turns after the agent's, Davidson), each capped
per class so no set or class dominates, plus identity swaps: a text naming an identity is
copied with another identity in its place and the same label, so the model cannot learn that
naming a group is toxic. ETHOS is never trained on (GPL-3.0): it is evaluated only.

Each set's own test split (or a seeded 20 % of it) is held out and reported. The threshold is
chosen on benign traffic (detectors/evaluation/benign.py, calibration half) for a stated
false-positive rate, and the false-positive rate on the held-out half, the identity spread on
our templates (detectors/evaluation/identity.py) and every figure are written with the
artifact. ``--leave-out SET`` trains without SET and reports on all of it: the
leave-one-dataset-out figures in docs/detectors.md. Seeded: the same data and seed give the
same weights on the CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.evaluation.benign import benign_texts
from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.evaluation.identity import IDENTITIES, flag_rates, spread
from detectors.training.adapter import Example, TrainConfig, Trained, train
from detectors.training.sampling import auc, capped, held_out_split
from detectors.training.toxicity_data import EVALUATION_ONLY, TRAINABLE, Labelled, load

ARTIFACT = Path(__file__).resolve().parents[1] / "assets" / "toxicity"
TARGET_FPR = 0.015  # chosen on the calibration half; the bound is 2 % on benign traffic
CONTEXT_CHARS = 400  # the end of the context is what the reply answers
_TERMS = "|".join(sorted(map(re.escape, IDENTITIES), key=len, reverse=True))
IDENTITY = re.compile(rf"\b({_TERMS})\b", re.IGNORECASE)


def example(row: Labelled) -> Example:
    context = row.context[-CONTEXT_CHARS:] if row.context else None
    return Example(row.text, row.label, context)


def identity_swaps(rows: Sequence[Labelled], seed: int, share: float = 0.5) -> list[Labelled]:
    """Copies of rows naming an identity, with another identity named instead (same label)."""
    rng = np.random.default_rng(seed)
    out: list[Labelled] = []
    for row in rows:
        if IDENTITY.search(row.text) and rng.random() < share:
            other = IDENTITIES[int(rng.integers(len(IDENTITIES)))]
            text = IDENTITY.sub(other, row.text, count=1)
            out.append(Labelled(text, row.label, row.source, row.split, row.category, row.context))
    return out


def probabilities(model: Trained, examples: Sequence[Example]) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-model.logits(examples)[:, 0])), dtype=np.float64)


def report_sets(model: Trained, rows: Sequence[Labelled], threshold: float) -> dict[str, Any]:
    """AUC, recall and false-positive rate per set on ``rows``."""
    scores = probabilities(model, [example(r) for r in rows])
    out: dict[str, Any] = {}
    for source in sorted({r.source for r in rows}):
        idx = [i for i, r in enumerate(rows) if r.source == source]
        labels = [rows[i].label for i in idx]
        flagged = [scores[i] >= threshold for i in idx]
        pos = [f for f, y in zip(flagged, labels, strict=True) if y == 1]
        neg = [f for f, y in zip(flagged, labels, strict=True) if y == 0]
        out[source] = {
            "auc": auc(labels, [float(scores[i]) for i in idx]), "n": len(idx),
            "recall": round(sum(pos) / len(pos), 4) if pos else None,
            "false_positive_rate": round(sum(neg) / len(neg), 4) if neg else None,
        }  # fmt: skip
    return out


def calibrate(model: Trained, root: Path) -> tuple[float, dict[str, Any]]:
    """The threshold at TARGET_FPR on the calibration half; the held-out half's rates."""
    calibration = [Example(t.text, 0) for t in benign_texts(root, "calibration")]
    held = benign_texts(root, "held_out")
    threshold = float(np.quantile(probabilities(model, calibration), 1 - TARGET_FPR))
    threshold = round(min(max(threshold, 0.05), 0.95), 3)
    held_scores = probabilities(model, [Example(t.text, 0) for t in held])
    by_kind = {
        kind: round(float(np.mean([s >= threshold for s, t in zip(held_scores, held, strict=True)
                                   if t.kind == kind])), 4)
        for kind in ("request", "answer")
    }  # fmt: skip
    rates = flag_rates(lambda texts: probabilities(model, [Example(t, 0) for t in texts]),
                       threshold)  # fmt: skip
    return threshold, {
        "benign_calibration_n": len(calibration),
        "benign_held_out_n": len(held),
        "benign_held_out_fpr": round(float(np.mean(held_scores >= threshold)), 4),
        "benign_held_out_fpr_by_kind": by_kind,
        "identity_spread": round(spread(rates), 4),
        "identity_max": max(rates, key=lambda k: rates[k]),
    }


def training_rows(rows: Sequence[Labelled], per_class: int, seed: int) -> list[Labelled]:
    base = capped(rows, per_class, seed)
    return base + identity_swaps(base, seed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=ARTIFACT)
    parser.add_argument("--leave-out", choices=TRAINABLE, default=None)
    parser.add_argument("--per-class", type=int, default=3000, help="rows per set and label")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    root = eval_dir(args.eval_dir)
    rows = load(root / "toxicity")
    trainable = [r for r in rows if r.source in TRAINABLE and r.source != args.leave_out]
    train_rows, held = held_out_split(trainable, args.seed)
    examples = [example(r) for r in training_rows(train_rows, args.per_class, args.seed)]
    config = TrainConfig(labels=("toxic",), epochs=args.epochs, seed=args.seed,
                         device=args.device)  # fmt: skip
    sources = ", ".join(sorted({r.source for r in train_rows}))
    print(f"training on {len(examples)} examples ({sources})")
    started = time.perf_counter()
    model = train(examples, config)
    seconds = round(time.perf_counter() - started)
    threshold, benign = calibrate(model, root)
    unseen = [r for r in rows if r.source in (*EVALUATION_ONLY, args.leave_out)]
    report = {
        "threshold": threshold, "train_examples": len(examples), "train_seconds": seconds,
        "held_out_splits": report_sets(model, held, threshold),
        "unseen_sets": report_sets(model, unseen, threshold), **benign,
        "leave_out": args.leave_out, "per_class": args.per_class, "epochs": args.epochs,
        "seed": args.seed,
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    if args.leave_out is None:
        metadata = {"name": "toxicity", "data": sorted(TRAINABLE), "figures": report,
                    "licences": "see detectors/training/toxicity_data.py"}  # fmt: skip
        model.save(args.out, {"toxic": threshold}, metadata)
        print(f"adapter written to {args.out}")


if __name__ == "__main__":
    main()
