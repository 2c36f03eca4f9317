"""Drift detectors on seeded streams: detection delay, misses and false alarms.

Run: ``.venv/bin/python -m bench.drift``. Rate drift: per-window flag rates from windows of
``--window-events`` Bernoulli events, a base rate, and a step change at window 100 of 200,
over ``--seeds`` seeds, fed to ``RateDrift`` (river ADWIN and Page-Hinkley); plus streams with
no change, for the false-alarm rate. Embedding drift: ``mean_shift_test`` between a reference
window of real answers (HaluEval QA, ../shared/eval) and a current window drawn from the same
pool (false alarms) or with a share of tweets (Davidson) mixed in (power). Baseline for the
ratio: the same permutation test on random vectors of the same shape, no drift, which should
fire at ``alpha``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys

import numpy as np

from detectors.drift import RateDrift, mean_shift_test
from detectors.evaluation.data import eval_dir

EVAL = eval_dir()  # LLM_MONITOR_EVAL_DIR, else shared/eval beside the repo

CHANGE_AT, WINDOWS = 100, 200


def rate_stream(rng: np.random.Generator, base: float, after: float, events: int) -> list[int]:
    """Flagged events per window."""
    rates = [base] * CHANGE_AT + [after] * (WINDOWS - CHANGE_AT)
    return [int(rng.binomial(events, p)) for p in rates]


def rate_trial(
    base: float, after: float, events: int, seeds: int
) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, list[float]]] = {
        name: {"delay": [], "missed": [], "false_alarms": []} for name in ("adwin", "page_hinkley")
    }
    for seed in range(seeds):
        detector = RateDrift()
        first_after: dict[str, int] = {}
        alarms = dict.fromkeys(out, 0)
        stream = rate_stream(np.random.default_rng(seed), base, after, events)
        for i, flagged in enumerate(stream):
            for name in detector.update(flagged, events):
                if i < CHANGE_AT:
                    alarms[name] += 1
                else:
                    first_after.setdefault(name, i - CHANGE_AT)
        for name, stats in out.items():
            stats["false_alarms"].append(alarms[name] / CHANGE_AT)
            if after != base:
                stats["missed"].append(0.0 if name in first_after else 1.0)
                if name in first_after:
                    stats["delay"].append(first_after[name])
    return {
        name: {
            "median_delay_windows": statistics.median(s["delay"]) if s["delay"] else None,
            "miss_rate": statistics.mean(s["missed"]) if s["missed"] else None,
            "false_alarms_per_100_windows": 100 * statistics.mean(s["false_alarms"]),
        }
        for name, s in out.items()
    }


def text_pools() -> tuple[list[str], list[str]]:
    halu = EVAL / "hallucination" / "halueval_qa_one-turn_data.jsonl"
    tweets = EVAL / "toxicity" / "davidson_labeled_data.csv"
    answers = []
    for line in halu.read_text().splitlines():
        row = json.loads(line)
        answers += [row["knowledge"].split(". ")[0], row["right_answer"]]
    with tweets.open(newline="") as f:
        other = [row["tweet"] for _, row in zip(range(600), csv.DictReader(f), strict=False)]
    return answers, other


def embedding_trials(window: int, trials: int, alpha: float) -> dict[str, float]:
    from detectors.embedding import EmbeddingService

    answers, tweets = text_pools()
    service = EmbeddingService(cache_size=0).start()
    a, t = service.encode(answers), service.encode(tweets)
    results: dict[str, float] = {}
    for share in (0.0, 0.05, 0.1, 0.2):
        fired = 0
        for seed in range(trials):
            rng = np.random.default_rng(1000 + seed)
            order = rng.permutation(len(a))
            reference = a[order[:window]]
            n_other = int(round(share * window))
            current = np.concatenate([
                a[order[window : 2 * window - n_other]], t[rng.permutation(len(t))[:n_other]]
            ])  # fmt: skip
            fired += mean_shift_test(reference, current, permutations=200, seed=seed).drifted(alpha)
        results[f"tweets_{int(share * 100)}pct_detection_rate"] = fired / trials
    noise = np.random.default_rng(7)
    fired = sum(
        mean_shift_test(noise.normal(size=(window, a.shape[1])),
                        noise.normal(size=(window, a.shape[1])),
                        permutations=200, seed=s).drifted(alpha)
        for s in range(trials)
    )  # fmt: skip
    results["random_vectors_false_alarm_rate"] = fired / trials
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--window-events", type=int, default=500)
    parser.add_argument("--base", type=float, default=0.02)
    parser.add_argument("--window", type=int, default=200, help="texts per embedding window")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    report: dict[str, object] = {}
    for after in (args.base, 0.03, 0.04, 0.06, 0.10):
        key = f"rate_{args.base}_to_{after}"
        trial = rate_trial(args.base, after, args.window_events, args.seeds)
        report[key] = trial
        for name, stats in trial.items():
            print(f"{key:<22} {name:<13} delay {stats['median_delay_windows']} windows, "
                  f"miss {stats['miss_rate']}, "
                  f"false alarms {stats['false_alarms_per_100_windows']}/100 windows")  # fmt: skip
    if (EVAL / "hallucination").is_dir() and (EVAL / "toxicity").is_dir():
        embedding = embedding_trials(args.window, args.trials, args.alpha)
        report["embedding"] = embedding
        for key, value in embedding.items():
            print(f"embedding {key}: {value:.3f} (alpha {args.alpha}, {args.trials} trials)")
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
