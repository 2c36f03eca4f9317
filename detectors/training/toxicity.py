"""Train the shipped toxicity adapter: ``python -m detectors.training.toxicity``.

The model: the packaged MiniLM, fine-tuned with LoRA adapters and a one-logit head
(detectors/training/adapter.py), judging a text on its own or a reply in its context (the
event's prompt). Data: every trainable set under ``EVAL_DIR/toxicity`` at once
(detectors/training/toxicity_data.py: ToxiGen, Stormfront, TweetEval hate and offensive,
DiaSafety replies in their context, ConvAbuse turns after the agent's, Davidson), each capped
per class so no set or class dominates, plus identity swaps (a text naming an identity is
copied with another identity in its place and the same label) and neutral sentences naming
identities (built from Winogender and WinoBias dev sentences), so the model cannot learn that
naming a group is toxic, plus hateful statements quoted to condemn them (not toxic) and to
endorse them (toxic): detectors/training/toxicity_contrast.py. ETHOS is never trained on
(GPL-3.0): it is evaluated only.

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
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from detectors.adapted import INT8, AdaptedClassifier, AdapterSpec
from detectors.counterfactual import IDENTITY, counterfactual_probabilities, threshold_key
from detectors.evaluation.benign import benign_texts
from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.evaluation.identity import IDENTITIES, flag_rates, spread
from detectors.training.adapter import Example, TrainConfig, Trained, train
from detectors.training.sampling import auc, capped, held_out_split
from detectors.training.toxicity_contrast import contrast_rows, counter_speech_figures
from detectors.training.toxicity_data import EVALUATION_ONLY, TRAINABLE, Labelled, load

ARTIFACT = Path(__file__).resolve().parents[1] / "assets" / "toxicity"
TARGET_FPR = 0.015  # chosen on the calibration half; the bound is 2 % on benign traffic
CONTEXT_CHARS = 400  # the end of the context is what the reply answers


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


Scorer = Callable[[Sequence[Example]], np.ndarray]


def scorer_of(model: Trained | AdaptedClassifier, counterfactual: bool = False) -> Scorer:
    """P(toxic) per example, from the model in training or a saved adapter (averaged over
    identity swaps with ``counterfactual``, as the detector does: detectors/counterfactual.py)."""
    if isinstance(model, AdaptedClassifier):
        probabilities = model.probabilities
        if counterfactual:
            probabilities = partial(counterfactual_probabilities, model.probabilities)
        return lambda examples: probabilities(
            [(e.context, e.text) if e.context else e.text for e in examples]
        )
    return lambda examples: np.asarray(
        1.0 / (1.0 + np.exp(-model.logits(examples)[:, 0])), dtype=np.float64
    )


def report_sets(score: Scorer, rows: Sequence[Labelled], threshold: float) -> dict[str, Any]:
    """AUC, recall and false-positive rate per set on ``rows``."""
    scores = score([example(r) for r in rows])
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


def calibrate(score: Scorer, root: Path) -> tuple[float, dict[str, Any]]:
    """The threshold at TARGET_FPR on the calibration half; the held-out half's rates."""
    calibration = [Example(t.text, 0) for t in benign_texts(root, "calibration")]
    held = benign_texts(root, "held_out")
    threshold = float(np.quantile(score(calibration), 1 - TARGET_FPR))
    threshold = round(min(max(threshold, 0.05), 0.95), 3)
    held_scores = score([Example(t.text, 0) for t in held])
    by_kind = {
        kind: round(float(np.mean([s >= threshold for s, t in zip(held_scores, held, strict=True)
                                   if t.kind == kind])), 4)
        for kind in ("request", "answer")
    }  # fmt: skip
    rates = flag_rates(lambda texts: score([Example(t, 0) for t in texts]), threshold)
    return threshold, {
        "benign_calibration_n": len(calibration),
        "benign_held_out_n": len(held),
        "benign_held_out_fpr": round(float(np.mean(held_scores >= threshold)), 4),
        "benign_held_out_fpr_by_kind": by_kind,
        "identity_spread": round(spread(rates), 4),
        "identity_max": max(rates, key=lambda k: rates[k]),
    }


THE_NOUN = re.compile(r"\b(The|the) (?=[a-z]{3,}\b)")


def identity_neutrals(bias_dir: Path, seed: int, n: int = 1200) -> list[Labelled]:
    """Neutral sentences naming an identity, from sentences we hold (Winogender, WinoBias dev):
    "The technician told the customer..." becomes "The {identity} technician told...". Label
    0: naming a group is not toxic. (Our identity check uses other, templated sentences.)"""
    winogender = (bias_dir / "winogender" / "all_sentences.tsv").read_text().splitlines()[1:]
    texts = [line.split("\t", 1)[1] for line in winogender]
    for path in sorted((bias_dir / "winobias").glob("*.txt.dev")):
        for line in path.read_text().splitlines():
            texts.append(re.sub(r"^\d+\s+", "", line).replace("[", "").replace("]", ""))
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(texts))[:n]:
        identity = IDENTITIES[int(rng.integers(len(IDENTITIES)))]
        text = THE_NOUN.sub(rf"\1 {identity} ", texts[i], count=1)
        if text != texts[i]:
            out.append(Labelled(text, 0, "identity_neutral"))
    return out


def training_rows(
    rows: Sequence[Labelled], per_class: int, seed: int, bias_dir: Path
) -> list[Labelled]:
    base = capped(rows, per_class, seed)
    return (base + identity_swaps(base, seed) + identity_neutrals(bias_dir, seed)
            + contrast_rows(base, seed))  # fmt: skip


def evaluate(
    score: Scorer, root: Path, rows: Sequence[Labelled], held: Sequence[Labelled],
    leave_out: str | None, trained: Sequence[Labelled],
) -> dict[str, Any]:  # fmt: skip
    """Threshold from benign calibration, then every figure the artifact ships with."""
    threshold, benign = calibrate(score, root)
    unseen = [r for r in rows if r.source in (*EVALUATION_ONLY, leave_out)]
    return {
        "threshold": threshold,
        "held_out_splits": report_sets(score, held, threshold),
        "unseen_sets": report_sets(score, unseen, threshold),
        "counter_speech": counter_speech_figures(score, held, threshold, trained), **benign,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=ARTIFACT)
    parser.add_argument("--leave-out", choices=TRAINABLE, default=None)
    parser.add_argument("--per-class", type=int, default=2000, help="rows per set and label")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument(
        "--recalibrate", type=Path, default=None,
        help="a saved adapter: recompute its threshold and figures, no training",
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=("torch", INT8), default="torch",
        help=f"with --recalibrate: calibrate the scores of this backend ({INT8}: the int8 "
        "ONNX model the CPU path runs when the adapter carries its thresholds)",
    )  # fmt: skip
    parser.add_argument(
        "--counterfactual", action="store_true",
        help="with --recalibrate: calibrate the scores averaged over identity swaps "
        "(detectors/counterfactual.py) and write them as the backend's +counterfactual threshold",
    )  # fmt: skip
    args = parser.parse_args(argv)
    root = eval_dir(args.eval_dir)
    rows = load(root / "toxicity")
    trainable = [r for r in rows if r.source in TRAINABLE and r.source != args.leave_out]
    train_rows, held = held_out_split(trainable, args.seed)
    if args.recalibrate is not None:
        device = "cpu" if args.backend == INT8 else args.device
        saved = AdaptedClassifier(args.recalibrate, device=device, backend=args.backend)
        score = scorer_of(saved, args.counterfactual)
        figures = evaluate(score, root, rows, held, args.leave_out, train_rows)
        if args.counterfactual:
            write_backend(args.recalibrate, saved, threshold_key(saved.quantized), figures)
            return
        if args.backend == INT8:
            write_backend(args.recalibrate, saved, INT8, figures)
            return
        write(args.recalibrate, saved, saved.spec.metadata.get("figures", {}) | figures)
        return
    chosen = training_rows(train_rows, args.per_class, args.seed, root / "bias")
    config = TrainConfig(labels=("toxic",), epochs=args.epochs, seed=args.seed,
                         device=args.device)  # fmt: skip
    print(f"training on {len(chosen)} examples ({', '.join(sorted({r.source for r in chosen}))})")
    started = time.perf_counter()
    model = train([example(r) for r in chosen], config)
    report = {
        "train_examples": len(chosen), "train_seconds": round(time.perf_counter() - started),
        "leave_out": args.leave_out, "per_class": args.per_class, "epochs": args.epochs,
        "seed": args.seed,
        **evaluate(scorer_of(model), root, rows, held, args.leave_out, train_rows),
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    if args.leave_out is None:
        model.save(args.out, {"toxic": report["threshold"]}, metadata(report))
        print(f"adapter written to {args.out}")


def metadata(report: dict[str, Any]) -> dict[str, Any]:
    return {"name": "toxicity", "data": sorted(TRAINABLE), "figures": report,
            "licences": "see detectors/training/toxicity_data.py"}  # fmt: skip


def write(directory: Path, saved: AdaptedClassifier, report: dict[str, Any]) -> None:
    """Rewrite a saved adapter's threshold and figures (its weights are unchanged)."""
    spec = saved.spec
    AdapterSpec(spec.labels, spec.rank, spec.alpha, spec.max_length,
                {"toxic": report["threshold"]}, metadata(report) | _by_backend(spec),
                spec.backend_thresholds).write(directory)  # fmt: skip
    print(json.dumps(report, indent=1))
    print(f"threshold and figures rewritten in {directory}")


def write_backend(
    directory: Path, saved: AdaptedClassifier, backend: str, figures: dict[str, Any]
) -> None:
    """Add a backend's own threshold and figures to a saved adapter; the fp32 ones stay."""
    spec = saved.spec
    thresholds = spec.backend_thresholds | {backend: {"toxic": figures["threshold"]}}
    by_backend = _by_backend(spec)["figures_by_backend"] | {backend: figures}
    meta = spec.metadata | {"figures_by_backend": by_backend}
    AdapterSpec(spec.labels, spec.rank, spec.alpha, spec.max_length, spec.thresholds, meta,
                thresholds).write(directory)  # fmt: skip
    print(json.dumps(figures, indent=1))
    print(f"{backend} threshold and figures written to {directory}")


def _by_backend(spec: AdapterSpec) -> dict[str, Any]:
    return {"figures_by_backend": dict(spec.metadata.get("figures_by_backend", {}))}


if __name__ == "__main__":
    main()
