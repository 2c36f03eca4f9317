"""The counterfactual pair loaders read the bias datasets as documented."""

from __future__ import annotations

import pytest

from detectors.evaluation.bias import (
    FEMALE,
    MALE,
    bias_dir,
    crows_pairs,
    winobias_pairs,
    winogender_pairs,
)

BIAS = bias_dir()

pytestmark = pytest.mark.skipif(not BIAS.is_dir(), reason=f"{BIAS} absent")


def test_gender_pairs_differ_by_pronoun() -> None:
    for pairs, expected in ((winobias_pairs(), 790), (winogender_pairs(), 240)):
        assert len(pairs) == expected
        for male, female in pairs:
            assert MALE.search(male) and FEMALE.search(female)


def test_crows_pairs() -> None:
    pairs = crows_pairs()
    assert len(pairs) == 1508
    assert all(a != b for a, b in pairs)
