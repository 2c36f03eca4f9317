"""Counter-speech and endorsement contrast cases for the toxicity adapter's training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detectors.training.adapter import Example
from detectors.training.toxicity_contrast import (
    COUNTER,
    ENDORSE,
    EVALUATION,
    contrast_rows,
    counter_speech_figures,
    quotable,
)
from detectors.training.toxicity_data import Labelled

HATE = "group x are vermin and should leave this country"
ROWS = [
    Labelled(HATE, 1, "toxigen"),
    Labelled("group x people cook wonderful food", 0, "toxigen"),
    Labelled("you are a total idiot lol", 1, "davidson"),  # a tweet set: not quoted
    Labelled("too short", 1, "stormfront"),
]


def test_only_hateful_statements_of_statement_sets_are_quoted() -> None:
    assert quotable(ROWS) == [HATE]


def test_each_quoted_statement_is_condemned_as_not_toxic_and_endorsed_as_toxic() -> None:
    rows = contrast_rows(ROWS, seed=0, share=1.0)
    assert [(r.label, r.source) for r in rows] == [(0, "counter_speech"), (1, "endorsement")]
    assert all(HATE in r.text for r in rows)
    assert contrast_rows(ROWS, seed=0, share=1.0) == rows  # seeded
    assert contrast_rows(ROWS, seed=0, share=0.0) == []


def test_the_evaluation_frames_are_never_trained_on() -> None:
    assert not set(EVALUATION) & (set(COUNTER) | set(ENDORSE))
    assert all("{q}" in frame for frame in (*COUNTER, *ENDORSE, *EVALUATION))


def test_counter_speech_figures_report_bare_recall_and_framed_flags() -> None:
    def score(examples: Sequence[Example]) -> np.ndarray:  # toxic unless condemned
        return np.array([0.2 if e.text.startswith(("It is not", "Statements")) else 0.9
                         for e in examples])  # fmt: skip

    figures = counter_speech_figures(score, ROWS + ROWS[:1], threshold=0.5)
    assert figures["n"] == 1 and figures["bare_recall"] == 1.0  # a repeated statement once
    assert figures["counter_speech_flagged"] == 0.6  # 3 of the 5 frames still flagged
    # a held-out statement that is also a training row is not a held-out statement
    assert counter_speech_figures(score, ROWS, 0.5, trained=ROWS[:1])["n"] == 0
