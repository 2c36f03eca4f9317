"""Local HF models named in config: loaded from disk only, wired into toxicity/hallucination.

The models are tiny random BERTs saved here with the shipped MiniLM tokenizer: these tests
check loading, label handling, batching and wiring, not quality (no hub access here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from detectors.embedding import EmbeddingService, default_model_path
from detectors.hallucination import HallucinationDetector
from detectors.local_models import NliScorer, SequenceClassifier
from detectors.toxicity import ToxicityDetector
from monitor.config import load_settings
from monitor.errors import ConfigError
from monitor.scoring.registry import build_semantic_detectors


def tiny_model(path: Path, labels: dict[int, str]) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(  # type: ignore[call-arg]
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=len(labels), id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)  # type: ignore[no-untyped-call]
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_path() / name, path / name)
    return path


def test_sequence_classifier_scores_the_positive_labels(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "tox", {0: "neutral", 1: "offensive", 2: "hate"})
    classifier = SequenceClassifier(path, device="cpu", batch_size=2)
    probs = classifier.probabilities(["hello", "you idiot", "thanks a lot"])
    assert probs.shape == (3,) and np.all((probs > 0) & (probs < 1))
    only_hate = SequenceClassifier(path, device="cpu", positive_labels=["hate"])
    assert np.all(only_hate.probabilities(["hello"]) < probs[:1] + 1e-9)
    with pytest.raises(ValueError, match="positive_labels"):
        SequenceClassifier(path, device="cpu", positive_labels=["toxic"]).probabilities(["x"])


def test_not_a_model_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        SequenceClassifier(tmp_path)


def test_detectors_use_the_local_models(
    tmp_path: Path, cpu_embeddings: EmbeddingService, monkeypatch: pytest.MonkeyPatch
) -> None:
    tox = tiny_model(tmp_path / "tox", {0: "non-toxic", 1: "toxic"})
    nli = tiny_model(tmp_path / "nli", {0: "contradiction", 1: "entailment", 2: "neutral"})
    monkeypatch.setenv("LLM_MONITOR_DETECTORS__TOXICITY__ENABLED", "true")
    monkeypatch.setenv("LLM_MONITOR_DETECTORS__TOXICITY__MODEL_PATH", str(tox))
    monkeypatch.setenv("LLM_MONITOR_DETECTORS__HALLUCINATION__ENABLED", "true")
    monkeypatch.setenv("LLM_MONITOR_DETECTORS__HALLUCINATION__NLI_MODEL_PATH", str(nli))
    monkeypatch.setenv("LLM_MONITOR_DETECTORS__EMBEDDING__DEVICE", "cpu")
    toxicity, hallucination = build_semantic_detectors(load_settings().detectors, cpu_embeddings)
    assert isinstance(toxicity, ToxicityDetector) and toxicity.classifier is not None
    assert toxicity.version.endswith("+tox") and toxicity.threshold == 0.5
    assert toxicity.score_texts(["a", "b"]).shape == (2,)
    assert isinstance(hallucination, HallucinationDetector) and hallucination.nli is not None
    support = hallucination.support("One. Two.", context=["One is a number."])
    assert support is not None and len(support.unsupported) == 2
    assert all(0 <= u <= 1 for u in support.unsupported)


def test_nli_needs_an_entailment_label(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "nli", {0: "yes", 1: "no"})
    with pytest.raises(ValueError, match="entailment"):
        NliScorer(path, device="cpu").entailment([("a", "b")])


def test_missing_local_model_directory_fails_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_DETECTORS__HALLUCINATION__NLI_MODEL_PATH", "/nope")
    with pytest.raises(ConfigError, match="NLI_MODEL_PATH"):
        load_settings()
