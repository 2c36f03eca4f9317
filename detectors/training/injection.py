"""Calibrate the injection detector's threshold on ordinary requests:
``python -m detectors.training.injection``.

The detector itself is unchanged (patterns plus contrastive similarity, detectors/injection.py);
what this sets is where it flags. Benign traffic is split in two halves:

- calibration: self-instruct seed tasks and HaluEval questions rows 0–249
  (detectors/evaluation/benign.py), the human turns of the first half of hh-rlhf's
  harmless-base test dialogues (MIT; harmful asks, but not injections), and NotInject part one;
- held out: user-oriented tasks, MT-Bench, Vicuna, HaluEval questions 250–499, the other
  half of hh-rlhf's human turns, NotInject parts two and three.

The threshold is the calibration half's (1 − TARGET_FPR) quantile; the held-out false-positive
rates, the AUC on JailbreakBench + NotInject (direct) and on BIPIA (indirect: the emails scored
as context passages, with the instruction model) are written with it to
``detectors/assets/injection.json``, which the detector reads.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.embedding import EmbeddingService
from detectors.evaluation.benign import benign_texts
from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.evaluation.sets import injection_sets
from detectors.injection import CALIBRATION, InjectionDetector

TARGET_FPR = 0.015
HH_RLHF = Path("traffic") / "hh-rlhf_harmless-base_test.jsonl.gz"


def dialogue_turns(path: Path, speaker: str = "Human") -> list[list[str]]:
    """Per hh-rlhf dialogue, the turns of ``speaker`` ("Human" or "Assistant"), from the
    ``chosen`` transcript."""
    other = "Assistant" if speaker == "Human" else "Human"
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            chosen = json.loads(line)["chosen"]
            turns = [part.split(f"\n\n{other}:")[0].strip()
                     for part in chosen.split(f"\n\n{speaker}:")[1:]]  # fmt: skip
            out.append([t for t in turns if t])
    return out


def negatives(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(calibration, held-out) benign requests by source."""
    injection = root / "prompt_injection"
    dialogues = dialogue_turns(root / HH_RLHF)
    half = len(dialogues) // 2

    def notinject(*parts: str) -> list[str]:
        files = [injection / f"notinject_{part}.json" for part in parts]
        return [row["prompt"] for path in files for row in json.loads(path.read_text())]

    def requests(which: str) -> dict[str, list[str]]:
        by_source: dict[str, list[str]] = {}
        for text in benign_texts(root, which):  # type: ignore[arg-type]
            if text.kind == "request":
                by_source.setdefault(text.source, []).append(text.text)
        return by_source

    calibration = requests("calibration") | {
        "hh_rlhf": [t for d in dialogues[:half] for t in d], "notinject": notinject("one"),
    }  # fmt: skip
    held_out = requests("held_out") | {
        "hh_rlhf": [t for d in dialogues[half:] for t in d],
        "notinject": notinject("two", "three"),
    }
    return calibration, held_out


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, scores)), 4)


def calibrate(detector: InjectionDetector, root: Path) -> dict[str, Any]:
    calibration, held_out = negatives(root)
    pooled = [s for texts in calibration.values() for s in detector.score_texts(texts)]
    threshold = round(float(np.quantile(pooled, 1 - TARGET_FPR)), 3)
    detector.threshold = threshold  # where the instruction model's own threshold is placed
    held_scores = {source: detector.score_texts(texts) for source, texts in held_out.items()}
    held_rates = {
        source: round(float(np.mean([s >= threshold for s in scores])), 4)
        for source, scores in held_scores.items()
    }
    every_held = [s for scores in held_scores.values() for s in scores]
    sets = injection_sets(root / "prompt_injection")
    figures: dict[str, Any] = {}
    for name in ("injection_direct.jsonl", "injection_indirect.jsonl"):
        rows = sets[name]
        texts = [r["text"] for r in rows]
        indirect = name == "injection_indirect.jsonl"  # context passages, not prompts
        scores = detector.score_contexts(texts) if indirect else detector.score_texts(texts)
        labels = [int(r["label"]) for r in rows]
        hits = [s >= threshold for s, y in zip(scores, labels, strict=True) if y == 1]
        figures[name.removesuffix(".jsonl")] = {
            "auc": auc(labels, scores), "recall": round(sum(hits) / len(hits), 4),
            "n": len(rows),
        }  # fmt: skip
    return {
        "threshold": threshold,
        "target_fpr": TARGET_FPR,
        "calibration_n": len(pooled),
        "held_out_fpr": held_rates,
        "held_out_fpr_pooled": round(float(np.mean([s >= threshold for s in every_held])), 4),
        "held_out_n": len(every_held),
        **figures,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=CALIBRATION)
    args = parser.parse_args(argv)
    root = eval_dir(args.eval_dir)
    # As the CPU runs (int8 instruction model), on any machine, so the figures are comparable.
    service = EmbeddingService(device="cpu", backend="auto").start()
    detector = InjectionDetector.shipped(service, threshold=0.5)
    report = calibrate(detector, root)
    args.out.write_text(json.dumps({"threshold": report["threshold"], "metadata": report},
                                   indent=1, sort_keys=True) + "\n")  # fmt: skip
    print(json.dumps(report, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
