"""Local Hugging Face models a detector may use instead of our small heads.

Config can name a sequence-classification directory for ``toxicity`` (any toxicity or
hate-speech classifier saved with ``save_pretrained``) and an NLI cross-encoder directory for
``hallucination``. Both load from disk only (``local_files_only``), lazily on first use, so the
load happens on the embed role's model thread, on the same device as the embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.embedding import resolve_device

# Label names that mean "not the positive class" in common toxicity classifiers.
NEGATIVE_LABELS = frozenset(
    {"neutral", "non-toxic", "non_toxic", "not_toxic", "nontoxic", "clean", "normal", "neither",
     "label_0", "ok", "safe", "benign", "not offensive", "not_offensive", "nothate", "not_hate"}
)  # fmt: skip


def _require_model_dir(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a Hugging Face {what} directory (no config.json); "
            "save one with save_pretrained() and name that directory in config"
        )


class SequenceClassifier:
    """P(positive) per text from a local sequence-classification model, batched."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "auto",
        positive_labels: Sequence[str] | None = None,
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        _require_model_dir(path, "sequence-classification")
        self.path = path
        self.device = device
        self.positive_labels = frozenset(label.lower() for label in positive_labels or ())
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None
        self._positive: list[int] = []

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = resolve_device(self.device)
        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(self.path, local_files_only=True)
        self._model = model.to(device).eval()
        self.device = device
        labels = {int(i): str(name).lower() for i, name in model.config.id2label.items()}
        if len(labels) == 1:
            self._positive = [0]
        elif self.positive_labels:
            self._positive = [i for i, name in labels.items() if name in self.positive_labels]
            if not self._positive:
                raise ValueError(
                    f"{self.path}: none of the labels {sorted(labels.values())} is in "
                    f"positive_labels {sorted(self.positive_labels)}; fix the config"
                )
        else:
            self._positive = [i for i, name in labels.items() if name not in NEGATIVE_LABELS]

    def probabilities(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        if not texts:
            return np.zeros(0, dtype=np.float64)
        if self._model is None:
            self._load()
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self._model(**batch).logits.float()
                if logits.shape[1] == 1:
                    probs = torch.sigmoid(logits[:, 0])
                else:
                    probs = torch.softmax(logits, dim=1)[:, self._positive].sum(dim=1)
                out.append(probs.cpu().numpy().astype(np.float64))
        return np.concatenate(out)


class NliScorer:
    """P(premise entails hypothesis) from a local NLI cross-encoder."""

    def __init__(self, path: Path, *, device: str = "auto", batch_size: int = 32) -> None:
        _require_model_dir(path, "NLI cross-encoder")
        self.path = path
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._entailment = -1

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        device = resolve_device(self.device)
        model = CrossEncoder(str(self.path), device=device, local_files_only=True)
        labels = {int(i): str(n).lower() for i, n in model.model.config.id2label.items()}
        entail = [i for i, name in labels.items() if name.startswith("entail")]
        if not entail:
            raise ValueError(
                f"{self.path}: no 'entailment' label among {sorted(labels.values())}; "
                "an NLI cross-encoder (contradiction / entailment / neutral) is needed"
            )
        self._model, self._entailment, self.device = model, entail[0], device

    @property
    def name(self) -> str:
        return self.path.name

    def entailment(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float64]:
        """One probability per (premise, hypothesis) pair."""
        if not pairs:
            return np.zeros(0, dtype=np.float64)
        if self._model is None:
            self._load()
        scores = self._model.predict(
            [list(p) for p in pairs],
            batch_size=self.batch_size,
            apply_softmax=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(scores, dtype=np.float64)[:, self._entailment]
