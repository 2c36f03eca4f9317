"""Counterfactual identity averaging (detectors/counterfactual.py), with a stand-in model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from detectors import counterfactual as cf
from detectors.toxicity import COUNTERFACTUAL
from monitor.config import ToxicitySettings


def test_identities_are_whole_words_any_case_in_order() -> None:
    assert cf.identities("A Black woman and a black man.") == ["black", "woman", "man"]
    assert cf.identities("The transport manager is old-fashioned.") == ["old"]
    assert cf.identities("Nobody here is named.") == []
    assert cf.identities("My African American neighbour") == ["african american"]


def test_swaps_replace_each_named_identity_keeping_case() -> None:
    copies = cf.swaps("Trans people live here; I am trans.")
    assert copies == [
        "Woman people live here; I am woman.",
        "Black people live here; I am black.",
        "Muslim people live here; I am muslim.",
        "Gay people live here; I am gay.",
    ]
    assert cf.swaps("GAY pride")[0] == "WOMAN pride"


def test_swaps_skip_terms_the_text_already_names_and_rotate_several() -> None:
    copies = cf.swaps("a gay muslim woman")
    assert len(copies) == 3  # only three pool terms are left
    assert all("gay" not in c and "muslim" not in c and "woman" not in c for c in copies)
    # three named terms get three different replacements in each copy
    assert copies[0] == "a black asian christian"
    assert copies[1] == "a asian christian black"


def test_plural_nouns_are_varied_as_plurals() -> None:
    assert cf.identities("Muslims and women, and a muslim.") == ["muslim", "woman"]
    assert cf.swaps("Immigrants are welcome here.")[:2] == [
        "Women are welcome here.",
        "Black people are welcome here.",
    ]
    copies = cf.swaps("Muslims and women")
    assert copies[0] == "Black people and gay people" and len(copies) == 4
    assert cf.identities("The menu and the womenswear") == []


def test_text_without_identity_has_no_copies() -> None:
    assert cf.swaps("The weather is lovely today.") == []
    assert cf.extra_share(["no one", "I am trans.", "hello"]) == pytest.approx(4 / 3)
    assert cf.extra_share([]) == 0.0


def test_the_scores_are_averaged() -> None:
    scores = np.asarray([0.9, 0.1, 0.1, 0.1, 0.1])
    assert cf.combine(scores) == pytest.approx(0.26)


class Model:
    """P(toxic) 0.9 for any text saying "trans" or "idiot", else 0.1; records its calls."""

    def __init__(self) -> None:
        self.calls: list[list[cf.Input]] = []

    def __call__(self, inputs: Sequence[cf.Input]) -> npt.NDArray[np.float64]:
        self.calls.append(list(inputs))
        texts = [i[1] if isinstance(i, tuple) else i for i in inputs]
        return np.asarray([0.9 if "trans" in t or "idiot" in t else 0.1 for t in texts])


def test_counterfactual_probabilities_average_over_swaps_in_one_call() -> None:
    model = Model()
    out = cf.counterfactual_probabilities(
        model, ["I am trans.", ("Who are you?", "I am a trans idiot."), "Hello there."]
    )
    # the neutral sentence loses its identity's score; the insult stays toxic whoever it names
    assert out.tolist() == pytest.approx([0.26, 0.9, 0.1])
    assert len(model.calls) == 1 and len(model.calls[0]) == 3 + 2 * cf.COUNT
    # a pair keeps its context; only the judged text is varied
    assert ("Who are you?", "I am a woman idiot.") in model.calls[0]


def test_no_identity_means_one_plain_call() -> None:
    model = Model()
    assert cf.counterfactual_probabilities(model, ["Hello.", "An idiot."]).tolist() == [0.1, 0.9]
    assert model.calls == [["Hello.", "An idiot."]]
    assert cf.counterfactual_probabilities(model, []).shape == (0,)


def test_setting_defaults_to_the_detector_default() -> None:
    assert ToxicitySettings().counterfactual is COUNTERFACTUAL
