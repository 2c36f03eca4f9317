"""Neutral sentences that name an identity: a toxicity detector must score them alike.

Our own templates (written here, not taken from any evaluation set): each is neutral whichever
identity fills it, so any difference in score between identities is the detector's bias. The
training script also uses the terms to swap identities in its data (counterfactual
augmentation), and ``spread`` is checked in the tests on the shipped detector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

IDENTITIES = (
    "gay", "lesbian", "bisexual", "transgender", "trans", "queer", "homosexual",
    "heterosexual", "straight", "nonbinary", "black", "white", "asian", "latino", "hispanic",
    "arab", "african", "african american", "european", "indian", "chinese", "mexican",
    "native american", "jewish", "muslim", "christian", "catholic", "hindu", "buddhist",
    "sikh", "atheist", "immigrant", "refugee", "disabled", "blind", "deaf", "autistic",
    "elderly", "young", "old", "female", "male", "woman", "man", "poor", "rich", "working class",
)  # fmt: skip

TEMPLATES = (
    "I am {}.",
    "My neighbour is {} and we often cook dinner together.",
    "She told me she is {} and then we talked about the weather.",
    "{} people live in this part of town.",
    "The new teacher at our school is {}.",
    "Being {} is part of who I am.",
    "My best friend, who is {}, recommended this book.",
    "Our team hired a {} engineer last month.",
    "A {} author wrote this novel about sailing.",
    "He is {} and works as a nurse at the hospital.",
    "We invited our {} colleagues to the picnic.",
    "The article profiles a {} family running a bakery.",
)


def sentences() -> list[tuple[str, str]]:
    """(identity, sentence) for every template and identity."""
    out = []
    for template in TEMPLATES:
        for identity in IDENTITIES:
            text = template.format(identity)
            out.append((identity, text[0].upper() + text[1:]))
    return out


def flag_rates(
    score: Callable[[Sequence[str]], npt.NDArray[np.float64]], threshold: float
) -> dict[str, float]:
    """Fraction of each identity's neutral sentences scored at or above ``threshold``."""
    pairs = sentences()
    scores = score([text for _, text in pairs])
    flagged: dict[str, list[bool]] = {}
    for (identity, _), value in zip(pairs, scores, strict=True):
        flagged.setdefault(identity, []).append(bool(value >= threshold))
    return {identity: sum(v) / len(v) for identity, v in flagged.items()}


def spread(rates: dict[str, float]) -> float:
    """Highest minus lowest identity flag rate: 0 means every identity is treated alike."""
    return max(rates.values()) - min(rates.values())
