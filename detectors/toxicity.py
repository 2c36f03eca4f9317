"""Toxicity: is a response (or a prompt) hateful, abusive, offensive or an unsafe reply?

The shipped model is the packaged MiniLM fine-tuned with LoRA adapters and a one-logit head
on seven labelled sets at once (detectors/assets/toxicity/, ~1.4 MB;
``python -m detectors.training.toxicity`` reproduces it and writes its figures beside it). A
response is judged in its context, as a (prompt, response) pair, so a safe answer to a toxic
question is not flagged and an answer that agrees with one is; a prompt is judged alone and
reported in the details, never flagged (a toxic answer to a toxic prompt is a different
incident from an unprovoked one). Its threshold is calibrated for a stated false-positive rate
on benign requests and answers.

Config may instead name a linear head on the shared sentence embeddings (``head_path``; the
older ``detectors/assets/toxicity_head.json`` is one, trained on Davidson tweets) or a local
Hugging Face sequence-classification directory (``model_path``, threshold 0.5 by default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.adapted import AdaptedClassifier
from detectors.base import Finding
from detectors.counterfactual import counterfactual_probabilities, threshold_key
from detectors.embedding import EmbeddingService, Vectors
from detectors.local_models import SequenceClassifier
from monitor.ingest.events import Event

DEFAULT_HEAD = Path(__file__).parent / "assets" / "toxicity_head.json"
DEFAULT_ADAPTER = Path(__file__).parent / "assets" / "toxicity"
CONTEXT_CHARS = 400  # the end of the prompt is what the response answers
COUNTERFACTUAL = True  # average over identity swaps (detectors/counterfactual.py), issue 10


@dataclass(frozen=True)
class ToxicityHead:
    """A linear head on L2-normalised embeddings; ``metadata`` names its data and training."""

    weights: npt.NDArray[np.float64]
    bias: float
    threshold: float
    embedding_model: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, vectors: Vectors) -> npt.NDArray[np.float64]:
        if vectors.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"toxicity head expects {self.weights.shape[0]}-d embeddings from "
                f"{self.embedding_model}, got {vectors.shape[1]}-d: retrain it for this model "
                "(see detectors/training/)"
            )
        logits = vectors.astype(np.float64) @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)

    def save(self, path: Path) -> None:
        payload = asdict(self)
        payload["weights"] = [round(float(w), 7) for w in self.weights]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = DEFAULT_HEAD) -> ToxicityHead:
        try:
            raw = json.loads(path.read_text())
            return cls(
                weights=np.asarray(raw["weights"], dtype=np.float64),
                bias=float(raw["bias"]),
                threshold=float(raw["threshold"]),
                embedding_model=str(raw["embedding_model"]),
                metadata=dict(raw.get("metadata", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a toxicity head ({exc})") from exc


def shipped_adapter(embeddings: EmbeddingService) -> AdaptedClassifier | None:
    """The packaged toxicity adapter, when the package has one."""
    if not (DEFAULT_ADAPTER / "adapter.json").is_file():
        return None
    return AdaptedClassifier.beside(DEFAULT_ADAPTER, embeddings)


class ToxicityDetector:
    """Scores responses in their context; flags those at or above the threshold."""

    name = "toxicity"
    version = "2.0.0"

    def __init__(
        self,
        embeddings: EmbeddingService,
        head: ToxicityHead | None = None,
        threshold: float | None = None,
        classifier: SequenceClassifier | None = None,
        adapter: AdaptedClassifier | None = None,
        counterfactual: bool = COUNTERFACTUAL,
    ) -> None:
        self.embeddings = embeddings
        self.classifier = classifier
        self.counterfactual = counterfactual  # adapter only: detectors/counterfactual.py
        self.adapter = None
        if classifier is None and head is None:
            self.adapter = adapter or shipped_adapter(embeddings)
        self.head = head or (ToxicityHead.load() if self.adapter is None else None)
        if classifier is not None:
            self.version = f"{ToxicityDetector.version}+{classifier.path.name}"
            default = 0.5
        elif self.adapter is not None:
            self.version = f"{ToxicityDetector.version}+{self.adapter.name}"
            default = self.adapter.thresholds["toxic"]
            if counterfactual:  # calibrated on the averaged scores, where the adapter has one
                key = threshold_key(self.adapter.quantized)
                default = self.adapter.spec.backend_thresholds.get(key, {}).get("toxic", default)
                self.version += "+counterfactual"  # findings say how they were scored
        else:
            self.version = f"{ToxicityDetector.version}+head"
            default = self.head.threshold if self.head else 0.5
        self.threshold = default if threshold is None else threshold
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"toxicity threshold must be within [0, 1], got {self.threshold}")

    def score_texts(
        self, texts: Sequence[str], contexts: Sequence[str] | None = None
    ) -> npt.NDArray[np.float64]:
        """Probability that each text is toxic, in its context where one is given."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        if self.classifier is not None:
            return self.classifier.probabilities(texts)
        if self.adapter is not None:
            pairs: list[str | tuple[str, str]] = [
                (c[-CONTEXT_CHARS:], t) if c else t
                for t, c in zip(texts, contexts or [""] * len(texts), strict=True)
            ]
            if self.counterfactual:
                return counterfactual_probabilities(self.adapter.probabilities, pairs)
            return self.adapter.probabilities(pairs)
        assert self.head is not None  # noqa: S101 - set whenever neither model is
        return self.head.probabilities(self.embeddings.encode(texts))

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        scored = [e for e in batch if e.response]
        if not scored:
            return []
        prompts = [e.prompt_text for e in scored]
        response_p = self.score_texts([e.response or "" for e in scored], prompts)
        prompt_p = self.score_texts([p for p in prompts if p])
        by_prompt = iter(prompt_p)
        findings = []
        for event, p_response, prompt in zip(scored, response_p, prompts, strict=True):
            flagged = bool(p_response >= self.threshold)
            details = {"threshold": f"{self.threshold:.3f}"}
            if prompt:
                details["prompt_score"] = f"{next(by_prompt):.3f}"
            findings.append(
                Finding(
                    request_id=event.request_id,
                    detector=self.name,
                    detector_version=self.version,
                    score=float(p_response),
                    flagged=flagged,
                    category="toxic" if flagged else "clean",
                    details=details,
                )
            )
        return findings
