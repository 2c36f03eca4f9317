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

Config may name a local NLI cross-encoder directory (``detectors.hallucination.nli_model_path``);
a sentence's unsupported score is then one minus P(sources entail it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from detectors.base import Finding
from detectors.embedding import EmbeddingService
from detectors.local_models import NliScorer
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
    version = "1.0.0"
    NOVELTY_WEIGHT: ClassVar[dict[str, float]] = {"grounding": 1.0, "self_consistency": 0.4}
    # 0.05 maximises F1 on HaluEval, whose right answers are copied spans; a faithful
    # paraphrase of a passage scores ~0.3, so real traffic needs the higher bar.
    THRESHOLD: ClassVar[dict[str, float]] = {"grounding": 0.35, "self_consistency": 0.3}

    def __init__(
        self,
        embeddings: EmbeddingService,
        thresholds: dict[str, float] | None = None,
        nli: NliScorer | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.nli = nli
        if nli is not None:
            self.version = f"{HallucinationDetector.version}+{nli.path.name}"
        self.thresholds = {**self.THRESHOLD, **(thresholds or {})}
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
        claims = sentences(response)
        if not claims:
            return None
        if context:
            mode, sources = "grounding", [[*context, prompt]]
        elif samples:
            mode, sources = "self_consistency", [[s] for s in samples]
        else:
            return None
        if self.nli is not None:
            return Support(mode, self._entailed(sources, claims))
        return Support(mode, self._against(sources, claims, self.NOVELTY_WEIGHT[mode]))

    def _entailed(self, sources: list[list[str]], claims: list[str]) -> tuple[float, ...]:
        """With an NLI model: one minus P(source entails claim), averaged over sources."""
        assert self.nli is not None  # noqa: S101 - only called when set
        premises = [" ".join(src) for src in sources]
        probs = self.nli.entailment([(p, c) for p in premises for c in claims])
        unsupported = 1.0 - probs.reshape(len(premises), len(claims)).mean(axis=0)
        return tuple(float(x) for x in unsupported)

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
