"""Hallucination detector: grounding and self-consistency, with the real model on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detectors.embedding import EmbeddingService
from detectors.hallucination import HallucinationDetector, content_words, novelty, sentences
from tests.conftest import decoded_event

PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. "
    "It was opened in 1889 for the World's Fair and is 330 metres tall."
)


@pytest.fixture(scope="module")
def detector(cpu_embeddings: EmbeddingService) -> HallucinationDetector:
    return HallucinationDetector(cpu_embeddings)


def test_sentences_and_content_words() -> None:
    assert sentences("One. Two!  Three?\nFour") == ["One.", "Two!", "Three?", "Four"]
    assert content_words("The tower IS in Paris, 1889.") == ["tower", "paris", "1889"]
    assert novelty(["tower", "rome"], {"tower"}) == 0.5
    assert novelty([], set()) == 0.0


@pytest.mark.parametrize(
    ("response", "grounded"),
    [
        ("The Eiffel Tower is in Paris.", True),
        ("It opened in 1889 and is 330 metres tall.", True),
        ("The Eiffel Tower is in Paris. It was designed by Leonardo da Vinci in 1502.", False),
        ("The tower stands in Rome and opened in 1920.", False),
    ],
)
def test_grounding(detector: HallucinationDetector, response: str, grounded: bool) -> None:
    support = detector.support(response, context=[PASSAGE], prompt="Tell me about the tower")
    assert support is not None and support.mode == "grounding"
    assert (support.score < detector.thresholds["grounding"]) is grounded


def test_least_supported_sentence_is_named_by_index(detector: HallucinationDetector) -> None:
    support = detector.support(
        "The Eiffel Tower is in Paris. It was designed by Leonardo da Vinci.", context=[PASSAGE]
    )
    assert support is not None
    assert support.least_supported().startswith("s1=")


def test_self_consistency_prefers_the_agreeing_answer(detector: HallucinationDetector) -> None:
    samples = [
        "Nothing happens; the seeds pass through your digestive system.",
        "The watermelon seeds are excreted without harm.",
        "You digest them or pass them; nothing bad happens.",
    ]
    agree = detector.support("Nothing bad happens, they pass through you.", samples=samples)
    disagree = detector.support("A watermelon grows in your stomach.", samples=samples)
    assert agree is not None and disagree is not None
    assert agree.mode == "self_consistency"
    assert agree.score < disagree.score


def test_nothing_to_check_against_gives_no_finding(detector: HallucinationDetector) -> None:
    assert detector.support("Paris.") is None
    assert detector.support("", context=[PASSAGE]) is None


def test_findings_from_events(detector: HallucinationDetector) -> None:
    batch = [
        decoded_event("ok", response="The tower is in Paris.", context=[PASSAGE]),
        decoded_event("bad", response="It was built in Rome by Caesar.", context=[PASSAGE]),
        decoded_event("none", response="Hello there."),
    ]
    findings = {f.request_id: f for f in detector.score(batch)}
    assert set(findings) == {"ok", "bad"}
    assert findings["bad"].flagged and findings["bad"].category == "ungrounded"
    assert not findings["ok"].flagged and findings["ok"].category == "supported"
    assert findings["bad"].details["mode"] == "grounding"
    assert "Rome" not in json.dumps(findings["bad"].details)  # details never carry the text


def test_bad_thresholds_are_refused(detector: HallucinationDetector) -> None:
    with pytest.raises(ValueError, match="unknown hallucination mode"):
        HallucinationDetector(detector.embeddings, {"vibes": 0.5})
    with pytest.raises(ValueError, match="grounding"):
        HallucinationDetector(detector.embeddings, {"grounding": 2.0})


class HalfSure:
    """A support model that is never sure: P(supported) = 0.5 for every pair."""

    name = "half-sure"

    def __init__(self, novelty_weight: float) -> None:
        self.novelty_weight = novelty_weight

    def entailment(self, pairs: object) -> np.ndarray:
        return np.full(len(pairs), 0.5)  # type: ignore[arg-type]


def test_a_support_model_may_mix_in_word_novelty(cpu_embeddings: EmbeddingService) -> None:
    copied = "It was opened in 1889 for the World's Fair."
    invented = "It was designed by Leonardo da Vinci in Rome."
    alone = HallucinationDetector(cpu_embeddings, nli=HalfSure(0.0))
    mixed = HallucinationDetector(cpu_embeddings, nli=HalfSure(0.25))
    score = {
        (name, text): d.support(text, context=[PASSAGE]).score  # type: ignore[union-attr]
        for name, d in (("alone", alone), ("mixed", mixed))
        for text in (copied, invented)
    }
    assert score["alone", copied] == score["alone", invented] == pytest.approx(0.5)
    assert score["mixed", copied] == pytest.approx(0.75 * 0.5)  # every word in the passage
    assert score["mixed", invented] > score["mixed", copied]
