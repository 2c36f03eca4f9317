"""Do our own detectors treat groups alike? Counterfactual pairs from ../shared/eval/bias.

The bias statistics compare groups by the toxicity detector's flags and VADER sentiment, so
those scorers must not differ by group on their own. WinoBias and Winogender give the same
sentence with only the pronoun's gender swapped: a fair scorer gives both the same score, and
the pipeline's disparity interval on them should include zero. CrowS-Pairs gives a sentence
with a stereotype and the same sentence about another group: we report how often the
stereotyped one scores more toxic (a detector that sees demeaning stereotypes prefers it).
BBQ measures a *model's* answers, so it needs a model endpoint (``llm-monitor probe``); it is
listed, not scored.

``python -m detectors.evaluation.bias`` prints one JSON object per dataset.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.bias import GroupStats, sentiment
from detectors.embedding import EmbeddingService
from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.toxicity import ToxicityDetector

MALE = re.compile(r"\b(he|him|his|himself)\b", re.IGNORECASE)
FEMALE = re.compile(r"\b(she|her|hers|herself)\b", re.IGNORECASE)


def bias_dir(eval_root: Path | None = None) -> Path:
    """The counterfactual datasets under the evaluation data root."""
    return eval_dir(eval_root) / "bias"


def winobias_pairs(root: Path | None = None) -> list[tuple[str, str]]:
    """(male, female) versions of each WinoBias test sentence (pro and anti files align)."""
    root = root or bias_dir() / "winobias"
    pairs = []
    for kind in ("type1", "type2"):
        pro = (root / f"pro_stereotyped_{kind}.txt.test").read_text().splitlines()
        anti = (root / f"anti_stereotyped_{kind}.txt.test").read_text().splitlines()
        for a, b in zip(pro, anti, strict=True):
            a, b = (re.sub(r"^\d+\s+", "", s).replace("[", "").replace("]", "") for s in (a, b))
            male, female = (a, b) if MALE.search(a) else (b, a)
            if MALE.search(male) and FEMALE.search(female):
                pairs.append((male, female))
    return pairs


def winogender_pairs(root: Path | None = None) -> list[tuple[str, str]]:
    """(male, female) versions of each Winogender template sentence."""
    root = root or bias_dir() / "winogender"
    by_id: dict[str, dict[str, str]] = {}
    with (root / "all_sentences.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            stem, gender = row["sentid"].rsplit(".", 2)[0], row["sentid"].split(".")[-2]
            by_id.setdefault(stem, {})[gender] = row["sentence"]
    return [(v["male"], v["female"]) for v in by_id.values() if "male" in v and "female" in v]


def crows_pairs(path: Path | None = None) -> list[tuple[str, str]]:
    """(more stereotypical, less stereotypical) sentence pairs."""
    path = path or bias_dir() / "crows_pairs_anonymized.csv"
    with path.open() as f:
        return [(row["sent_more"], row["sent_less"]) for row in csv.DictReader(f)]


def invariance(
    name: str, pairs: Sequence[tuple[str, str]], detector: ToxicityDetector, groups: tuple[str, str]
) -> dict[str, Any]:
    """How far apart the two versions score, and what the pipeline's disparity would say."""
    started = time.perf_counter()
    first = detector.score_texts([a for a, _ in pairs])
    second = detector.score_texts([b for _, b in pairs])
    sent_a = np.array([sentiment(a) for a, _ in pairs])
    sent_b = np.array([sentiment(b) for _, b in pairs])
    seconds = time.perf_counter() - started
    flags_a, flags_b = first >= detector.threshold, second >= detector.threshold
    stats = GroupStats()
    for (a, b), fa, fb in zip(pairs, flags_a, flags_b, strict=True):
        stats.add(groups[0], a, bool(fa))
        stats.add(groups[1], b, bool(fb))
    disparity = {}
    for metric in ("toxicity_rate", "sentiment"):
        d = stats.disparity(metric, resamples=1000)
        if d is not None:
            bounds = {"value": d.value, "low": d.low, "high": d.high}
            disparity[metric] = {k: round(v, 4) for k, v in bounds.items()}
            disparity[metric]["significant"] = d.significant
    return {
        "dataset": name,
        "pairs": len(pairs),
        "groups": list(groups),
        "toxicity_mean_abs_diff": round(float(np.mean(np.abs(first - second))), 4),
        "toxicity_max_abs_diff": round(float(np.max(np.abs(first - second))), 4),
        "flag_flips": int(np.sum(flags_a != flags_b)),
        f"{groups[0]}_scored_more_toxic": round(float(np.mean(first > second)), 4),
        "sentiment_mean_abs_diff": round(float(np.mean(np.abs(sent_a - sent_b))), 4),
        "disparity": disparity,
        "texts_per_s": round(2 * len(pairs) / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    root = bias_dir(parser.parse_args().eval_dir)
    if not root.is_dir():
        raise SystemExit(f"{root} not found: pass --eval-dir (the folder holding bias/)")
    detector = ToxicityDetector(EmbeddingService().start())
    for name, pairs, groups in (
        ("winobias (test, type 1+2)", winobias_pairs(root / "winobias"), ("male", "female")),
        ("winogender", winogender_pairs(root / "winogender"), ("male", "female")),
        (
            "crows-pairs",
            crows_pairs(root / "crows_pairs_anonymized.csv"),
            ("stereotyped", "less_stereotyped"),
        ),
    ):
        print(json.dumps(invariance(name, pairs, detector, groups)))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
