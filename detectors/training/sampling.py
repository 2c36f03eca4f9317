"""What every training script here does to its rows: hold out, cap per class, score AUC.

Rows are any objects with ``source`` and ``label`` (and optionally ``split``: a set's own
train/val/test). Seeded, so the same rows and seed give the same choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np


class Row(Protocol):
    @property
    def source(self) -> str: ...

    @property
    def label(self) -> int: ...


R = TypeVar("R", bound=Row)


def held_out_split(rows: Sequence[R], seed: int, share: float = 0.2) -> tuple[list[R], list[R]]:
    """(train, held out): a set's own test split where it has one, else a seeded ``share``."""
    rng = np.random.default_rng(seed)
    train_rows, held = [], []
    for row in rows:
        split = getattr(row, "split", "all")
        if split == "test" or (split == "all" and rng.random() < share):
            held.append(row)
        else:
            train_rows.append(row)
    return train_rows, held


def capped(rows: Sequence[R], per_class: int, seed: int) -> list[R]:
    """At most ``per_class`` rows of each (set, label), drawn with the seed."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[R]] = {}
    for row in rows:
        groups.setdefault((row.source, row.label), []).append(row)
    out: list[R] = []
    for key in sorted(groups):
        group = groups[key]
        picked = rng.permutation(len(group))[:per_class]
        out.extend(group[i] for i in sorted(picked))
    return out


def auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC rounded to 4 places; None with one class only."""
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, scores)), 4) if len(set(labels)) == 2 else None
