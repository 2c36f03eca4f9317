"""Hallucination: is each response sentence supported by the sources, or by the other samples?

Two modes, chosen per event by what it carries:

- **grounding** (``context`` present): each response sentence is checked against the context
  passages and the prompt;
- **self-consistency** (``samples`` present, SelfCheckGPT-style): against each other sampled
  answer, averaged over the samples.

A sentence's *unsupported score* mixes two signals: the share of its content words that appear
nowhere in the sources (new names, numbers and facts are what hallucinations add), and one
minus its best embedding similarity to a source sentence (paraphrase-tolerant). The event's
score is its least supported sentence's; details list the three least supported sentences by
index (never their text: details are persisted, and the redacted response is in ``events``).

The mix is per mode, from measurement (docs/detectors.md): for grounding, on HaluEval QA rows
0-249, content-word novelty alone gave AUC 0.90 and every share of embedding dissimilarity
made it worse (hallucinated answers restate the passage's topic), so grounding uses novelty
only and skips the embedding. For self-consistency on TruthfulQA the embedding helps a little
(AUC 0.54 → 0.58 at weight 0.4); both are weak there, see the docs.

With a support model — the shipped grounding adapter (detectors/assets/grounding/, the packaged
MiniLM fine-tuned as a cross-encoder on five grounding sets, ``python -m
detectors.training.grounding``), another adapter (``adapter_path``) or a local NLI
cross-encoder (``nli_model_path``) — a sentence's unsupported score is instead one minus
P(supported): for grounding the best over the context's chunks (a long context is cut at
sentence ends into pieces the model reads whole), for self-consistency the mean over the
samples (SelfCheckGPT-NLI); an adapter may mix in a share of word novelty (its
``novelty_weight``). Work per event is bounded (``MAX_CLAIMS`` sentences,
``MAX_CHUNKS`` pieces of each source).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from detectors.adapted import AdaptedClassifier
from detectors.base import Finding
from detectors.embedding import EmbeddingService
from monitor.ingest.events import Event

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORD_TEXT = (
    "a an the of in on at to for and or but is are was were be been being by with as from "
    "that this these those it its his her their he she they them we you i which who whom "
    "what when where how why did does do has have had not no yes so than then there here "
    "also very can could would should will may might must into about over after before"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
DEFAULT_GROUNDING = Path(__file__).parent / "assets" / "grounding"
CHUNK_CHARS = 1500  # what the grounding model read beside a claim in training
MAX_CHUNKS = 8
MAX_CLAIMS = 32


class SupportModel(Protocol):
    """P(the premise supports the hypothesis) per pair: an NLI model or the grounding adapter."""

    @property
    def name(self) -> str: ...

    def entailment(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float64]: ...


class GroundingModel:
    """A grounding adapter (one label: supported) as a support model."""

    def __init__(self, adapter: AdaptedClassifier) -> None:
        self.adapter = adapter
        self.threshold = adapter.thresholds.get("unsupported", 0.5)
        # Share of word novelty mixed into the unsupported score, chosen on training pairs.
        self.novelty_weight = float(adapter.spec.metadata.get("novelty_weight", 0.0))

    @property
    def name(self) -> str:
        return self.adapter.name

    def entailment(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float64]:
        return self.adapter.probabilities(list(pairs))


def shipped_grounding(embeddings: EmbeddingService) -> GroundingModel | None:
    """The packaged grounding adapter, when the package has one."""
    if not (DEFAULT_GROUNDING / "adapter.json").is_file():
        return None
    return GroundingModel(AdaptedClassifier.beside(DEFAULT_GROUNDING, embeddings))


def chunks(texts: Sequence[str], size: int = CHUNK_CHARS) -> list[str]:
    """The texts' sentences packed into pieces of at most ``size`` characters (a longer
    sentence is its own piece), at most MAX_CHUNKS of them."""
    out: list[str] = []
    current = ""
    for sentence in (s for text in texts for s in sentences(text)):
        if current and len(current) + 1 + len(sentence) > size:
            out.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        out.append(current)
    return out[:MAX_CHUNKS]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s and s.strip()]


def content_words(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


def novelty(sentence_words: Sequence[str], source_words: set[str]) -> float:
    """Share of the sentence's content words absent from the sources (0 when it has none)."""
    if not sentence_words:
        return 0.0
    return sum(1 for w in sentence_words if w not in source_words) / len(sentence_words)


@dataclass(frozen=True)
class Support:
    """Unsupported score per response sentence (higher = less supported)."""

    mode: str
    unsupported: tuple[float, ...]

    @property
    def score(self) -> float:
        return max(self.unsupported, default=0.0)

    def least_supported(self, k: int = 3) -> str:
        order = sorted(range(len(self.unsupported)), key=lambda i: -self.unsupported[i])[:k]
        return ",".join(f"s{i}={self.unsupported[i]:.2f}" for i in order)


class HallucinationDetector:
    """Grounding against ``context`` and self-consistency across ``samples``."""

    name = "hallucination"
    version = "2.0.0"
    NOVELTY_WEIGHT: ClassVar[dict[str, float]] = {"grounding": 1.0, "self_consistency": 0.4}
    # Without a support model: 0.05 maximises F1 on HaluEval, whose right answers are copied
    # spans; a faithful paraphrase of a passage scores ~0.3, so real traffic needs the higher bar.
    THRESHOLD: ClassVar[dict[str, float]] = {"grounding": 0.35, "self_consistency": 0.3}

    def __init__(
        self,
        embeddings: EmbeddingService,
        thresholds: dict[str, float] | None = None,
        nli: SupportModel | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.nli = nli if nli is not None else shipped_grounding(embeddings)
        defaults = dict(self.THRESHOLD)
        if self.nli is not None:
            self.version = f"{HallucinationDetector.version}+{self.nli.name}"
            calibrated = getattr(self.nli, "threshold", 0.5)
            defaults = dict.fromkeys(self.THRESHOLD, calibrated)
        self.thresholds = {**defaults, **(thresholds or {})}
        for mode, value in self.thresholds.items():
            if mode not in self.THRESHOLD:
                raise ValueError(f"unknown hallucination mode {mode!r}: use {list(self.THRESHOLD)}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"hallucination threshold {mode} must be in [0, 1], got {value}")

    def support(
        self,
        response: str,
        *,
        context: Sequence[str] = (),
        samples: Sequence[str] = (),
        prompt: str = "",
    ) -> Support | None:
        """None when there is nothing to check against (no context, no samples)."""
        claims = sentences(response)[:MAX_CLAIMS]
        if not claims:
            return None
        if context:
            mode, sources = "grounding", [[*context, prompt]]
        elif samples:
            mode, sources = "self_consistency", [[s] for s in samples]
        else:
            return None
        if self.nli is None:
            return Support(mode, self._against(sources, claims, self.NOVELTY_WEIGHT[mode]))
        unsupported = np.array(self._entailed(sources, claims))
        mix = float(getattr(self.nli, "novelty_weight", 0.0))
        if mix > 0.0:
            novel = np.array(self._against(sources, claims, 1.0))  # words only: no embedding
            unsupported = (1.0 - mix) * unsupported + mix * novel
        return Support(mode, tuple(float(x) for x in unsupported))

    def _entailed(self, sources: list[list[str]], claims: list[str]) -> tuple[float, ...]:
        """With a support model: one minus P(supported), the best chunk of each source, averaged
        over sources (one for grounding, one per sample for self-consistency)."""
        assert self.nli is not None  # noqa: S101 - only called when set
        pieces = [chunks(src) or [" ".join(src)] for src in sources]
        pairs = [(piece, claim) for group in pieces for piece in group for claim in claims]
        probs = self.nli.entailment(pairs)
        supported = np.zeros(len(claims))
        offset = 0
        for group in pieces:
            block = probs[offset : offset + len(group) * len(claims)]
            supported += block.reshape(len(group), len(claims)).max(axis=0)
            offset += len(group) * len(claims)
        return tuple(float(x) for x in 1.0 - supported / len(sources))

    def _against(
        self, sources: list[list[str]], claims: list[str], weight: float
    ) -> tuple[float, ...]:
        """Mean over sources of each claim's unsupported score against that source."""
        source_sentences = [[s for text in src for s in sentences(text)] for src in sources]
        flat = [s for group in source_sentences for s in group]
        if weight < 1.0:
            vectors = self.embeddings.encode(claims + flat)
            claim_v, rest = vectors[: len(claims)], vectors[len(claims) :]
        claim_words = [content_words(c) for c in claims]
        totals = np.zeros(len(claims))
        offset = 0
        for src, group in zip(sources, source_sentences, strict=True):
            words = {w for text in src for w in content_words(text)}
            novel = np.array([novelty(cw, words) for cw in claim_words])
            if weight < 1.0 and group:
                similarity = (claim_v @ rest[offset : offset + len(group)].T).max(axis=1)
                novel = weight * novel + (1.0 - weight) * (1.0 - np.clip(similarity, 0.0, 1.0))
            elif weight < 1.0:
                novel = weight * novel + (1.0 - weight)
            offset += len(group)
            totals += novel
        return tuple(float(x) for x in totals / len(sources))

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        findings = []
        for event in batch:
            if not event.response:
                continue
            result = self.support(
                event.response,
                context=event.context,
                samples=event.samples,
                prompt=event.prompt or "",
            )
            if result is None:
                continue
            flagged = result.score >= self.thresholds[result.mode]
            category = "supported"
            if flagged:
                category = "ungrounded" if result.mode == "grounding" else "inconsistent"
            findings.append(
                Finding(
                    request_id=event.request_id,
                    detector=self.name,
                    detector_version=self.version,
                    score=result.score,
                    flagged=flagged,
                    category=category,
                    details={
                        "mode": result.mode,
                        "sentences": str(len(result.unsupported)),
                        "least_supported": result.least_supported(),
                    },
                )
            )
        return findings
