"""Toxicity: a logistic-regression head on sentence embeddings, scoring each response.

The head (384 weights, a bias and a decision threshold) ships in the package as
``detectors/assets/toxicity_head.json``; ``python -m detectors.training.toxicity`` reproduces it
from ../shared/eval/toxicity (Davidson et al. 2017, MIT), balanced, with a fixed seed. Scoring
is one matrix-vector product per batch on top of the shared embedding service, so the cost is
the embedding. The prompt is scored too and reported in the details (a toxic answer to a toxic
prompt is a different incident from an unprovoked one) but only the response is flagged.
Config may name a local Hugging Face sequence-classification directory instead
(``detectors.toxicity.model_path``); it then scores the texts, threshold 0.5 by default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.base import Finding
from detectors.embedding import EmbeddingService, Vectors
from detectors.local_models import SequenceClassifier
from monitor.ingest.events import Event

DEFAULT_HEAD = Path(__file__).parent / "assets" / "toxicity_head.json"


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
                "(python -m detectors.training.toxicity --model DIR)"
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


class ToxicityDetector:
    """Scores responses with the head; flags those at or above the head's threshold."""

    name = "toxicity"
    version = "1.0.0"

    def __init__(
        self,
        embeddings: EmbeddingService,
        head: ToxicityHead | None = None,
        threshold: float | None = None,
        classifier: SequenceClassifier | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.classifier = classifier
        self.head = head or ToxicityHead.load()
        if classifier is not None:
            self.version = f"{ToxicityDetector.version}+{classifier.path.name}"
        default = 0.5 if classifier is not None else self.head.threshold
        self.threshold = default if threshold is None else threshold
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"toxicity threshold must be within [0, 1], got {self.threshold}")

    def score_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Probability that each text is toxic (hate or offensive)."""
        if not texts:
            return np.zeros(0, dtype=np.float64)
        if self.classifier is not None:
            return self.classifier.probabilities(texts)
        return self.head.probabilities(self.embeddings.encode(texts))

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        scored = [e for e in batch if e.response]
        if not scored:
            return []
        prompts = [e.prompt or "" for e in scored]
        probs = self.score_texts([e.response or "" for e in scored] + prompts)
        response_p, prompt_p = probs[: len(scored)], probs[len(scored) :]
        findings = []
        for event, p_response, p_prompt, prompt in zip(
            scored, response_p, prompt_p, prompts, strict=True
        ):
            flagged = bool(p_response >= self.threshold)
            details = {"threshold": f"{self.threshold:.3f}"}
            if prompt:
                details["prompt_score"] = f"{p_prompt:.3f}"
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
