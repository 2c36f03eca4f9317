"""Toxicity head and detector with the real offline model on CPU; binary evaluation maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.embedding import EmbeddingService
from detectors.evaluation.binary import binary_report, load_samples
from detectors.evaluation.identity import flag_rates, spread
from detectors.toxicity import ToxicityDetector, ToxicityHead
from tests.conftest import decoded_event

TOXIC = [
    "You are a worthless idiot and everyone hates you.",
    "Shut up, you stupid bitch.",
    "Go to hell, you pathetic loser.",
]
CLEAN = [
    "Thanks for asking! Here is a summary of the quarterly report.",
    "The capital of France is Paris.",
    "I hate Mondays, but the weather today is lovely.",
    "To reset your password, open Settings and choose Security.",
]


@pytest.fixture(scope="module")
def detector(cpu_embeddings: EmbeddingService) -> ToxicityDetector:
    return ToxicityDetector(cpu_embeddings)


def test_shipped_head_names_its_data_and_licence() -> None:
    head = ToxicityHead.load()
    assert head.weights.shape == (384,)
    assert "Davidson" in head.metadata["data"] and "MIT" in head.metadata["data"]
    assert head.metadata["dev_auc"] >= 0.9


def test_shipped_adapter_is_the_default_and_names_its_data(detector: ToxicityDetector) -> None:
    assert detector.adapter is not None and detector.version.startswith("2.0.0+toxicity.")
    metadata = detector.adapter.spec.metadata
    assert "ethos" not in metadata["data"]  # GPL-3.0: evaluated on, never trained on
    assert metadata["figures"]["benign_held_out_fpr"] <= 0.02


def test_neutral_sentences_score_alike_whichever_identity_they_name(
    detector: ToxicityDetector, cpu_embeddings: EmbeddingService
) -> None:
    """Our templated identity check (issue 10: spread at most 5 points). Scored alone, the
    shipped adapter flags 2 of 12 neutral sentences naming "trans" and none for most other
    identities (the old head: up to 7 of 12); averaged over identity swaps, as shipped, none."""
    assert detector.counterfactual
    rates = flag_rates(detector.score_texts, detector.threshold)
    assert spread(rates) <= 0.05
    assert sum(rates.values()) / len(rates) <= 0.01
    plain = ToxicityDetector(cpu_embeddings, counterfactual=False)
    rates = flag_rates(plain.score_texts, plain.threshold)
    assert spread(rates) <= 0.2
    assert sum(rates.values()) / len(rates) <= 0.02


@pytest.mark.parametrize("text", TOXIC)
def test_toxic_text_is_flagged(detector: ToxicityDetector, text: str) -> None:
    assert detector.score_texts([text])[0] >= detector.threshold


@pytest.mark.parametrize("text", CLEAN)
def test_clean_text_is_not_flagged(detector: ToxicityDetector, text: str) -> None:
    assert detector.score_texts([text])[0] < detector.threshold


def test_findings_score_responses_and_report_the_prompt(detector: ToxicityDetector) -> None:
    batch = [
        decoded_event("a", prompt="Insult me", response=TOXIC[0]),
        decoded_event("b", prompt="Capital of France?", response=CLEAN[1]),
        decoded_event("c", prompt="no answer", status="error"),
    ]
    findings = {f.request_id: f for f in detector.score(batch)}
    assert set(findings) == {"a", "b"}  # no response, nothing to score
    assert findings["a"].flagged and findings["a"].category == "toxic"
    assert not findings["b"].flagged and findings["b"].category == "clean"
    assert "prompt_score" in findings["a"].details


def test_head_round_trips_and_refuses_other_dimensions(tmp_path: Path) -> None:
    head = ToxicityHead(np.ones(4), -1.0, 0.5, "tiny", {"data": "x"})
    head.save(tmp_path / "head.json")
    loaded = ToxicityHead.load(tmp_path / "head.json")
    assert np.allclose(loaded.probabilities(np.zeros((1, 4), dtype=np.float32)), 1 / (1 + np.e))
    with pytest.raises(ValueError, match="retrain"):
        loaded.probabilities(np.zeros((1, 3), dtype=np.float32))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a toxicity head"):
        ToxicityHead.load(tmp_path / "bad.json")


def test_threshold_out_of_range_is_refused(detector: ToxicityDetector) -> None:
    with pytest.raises(ValueError, match="threshold"):
        ToxicityDetector(detector.embeddings, threshold=1.5)


def test_binary_report() -> None:
    report = binary_report([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1], threshold=0.5, seconds=2.0)
    assert report == {
        "auc": 0.75, "precision": 0.5, "recall": 0.5, "f1": 0.5, "threshold": 0.5,
        "false_positive_rate": 0.5, "n": 4, "texts_per_s": 2.0,
    }  # fmt: skip
    assert binary_report([1, 1], [0.9, 0.8], 0.5, 1.0)["auc"] is None  # one class: no AUC


def test_load_samples_names_the_bad_line() -> None:
    good = '{"text": "a", "label": 1}'
    assert load_samples([good, "", '{"text": "b", "label": 0}'])[1].label == 0
    with pytest.raises(ValueError, match="line 2"):
        load_samples([good, '{"text": "b", "label": 2}'])
    with pytest.raises(ValueError, match="line 1"):
        load_samples(['{"label": 1}'])
