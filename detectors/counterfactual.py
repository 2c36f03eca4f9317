"""Counterfactual identity averaging: score a text as if it named other identities too.

Why: the toxicity adapter is trained with identity swaps and identity-neutral sentences, yet
each training run still leaves a few short neutral sentences naming one identity above the
threshold ("I am trans.", "Trans people live in this part of town."): which identity it is
changes from run to run (docs/detectors.md, issue 10). Retraining does not fix that; scoring
does. A text that names an identity (``IDENTITIES``, whole words, any case) is also scored with
the identity replaced by each of a small fixed set of others (``SWAPS``: one per group,
deterministic), and the scores are averaged (``combine``: the mean over the original and its
swaps), so a neutral sentence scores about the same whichever identity it names,
while a text that is toxic whoever it names stays toxic. No parameter is learned: nothing here
is fitted to data.

Cost: texts without an identity term cost nothing extra; one that names any costs
``len(SWAPS)`` more forward passes (one batch with the originals). For a (context, text) pair
only the text is varied: the context is what was asked, the text is what is judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import numpy.typing as npt

from detectors.evaluation.identity import IDENTITIES

Input = str | tuple[str, str]


def _words(terms: Sequence[str]) -> re.Pattern[str]:
    """Any of ``terms`` as a whole word, any case; longer terms first ("african american")."""
    alternatives = "|".join(sorted(map(re.escape, terms), key=len, reverse=True))
    return re.compile(rf"\b({alternatives})\b", re.IGNORECASE)


# Plural nouns naming a group, and the identity term each stands for: "Muslims are..." is
# varied as "Muslim people are..." would be. (The training swaps use ``IDENTITY`` alone.)
PLURALS = {
    "women": "woman", "men": "man", "females": "female", "males": "male",
    "gays": "gay", "lesbians": "lesbian", "bisexuals": "bisexual", "homosexuals": "homosexual",
    "heterosexuals": "heterosexual", "blacks": "black", "whites": "white", "asians": "asian",
    "latinos": "latino", "hispanics": "hispanic", "arabs": "arab", "africans": "african",
    "african americans": "african american", "europeans": "european", "indians": "indian",
    "mexicans": "mexican", "native americans": "native american", "jews": "jewish",
    "muslims": "muslim", "christians": "christian", "catholics": "catholic", "hindus": "hindu",
    "buddhists": "buddhist", "sikhs": "sikh", "atheists": "atheist", "immigrants": "immigrant",
    "refugees": "refugee",
}  # fmt: skip
IDENTITY = _words(IDENTITIES)
NAMED = _words((*IDENTITIES, *PLURALS))

# One term from each of four groups (gender, race, religion, sexuality), then spares used when
# a text already names one of the first four. Not chosen on any measurement.
SWAPS = ("woman", "black", "muslim", "gay", "asian", "christian")
# What stands in for a plural noun: the plural, or "<adjective> people".
SWAP_PLURALS = {
    "woman": "women", "black": "black people", "muslim": "muslims", "gay": "gay people",
    "asian": "asian people", "christian": "christians",
}  # fmt: skip
COUNT = 4


def identities(text: str) -> list[str]:
    """The distinct identities a text names (a plural as its term), lower-cased, in order of
    first mention."""
    words = (m.group(0).lower() for m in NAMED.finditer(text))
    return list(dict.fromkeys(PLURALS.get(word, word) for word in words))


def _cased(term: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return term.upper()
    return term[0].upper() + term[1:] if like[0].isupper() else term


def _replace(chosen: dict[str, str], match: re.Match[str]) -> str:
    word = match.group(0).lower()
    if word in PLURALS:
        return _cased(SWAP_PLURALS[chosen[PLURALS[word]]], match.group(0))
    return _cased(chosen[word], match.group(0))


def swaps(text: str, pool: Sequence[str] = SWAPS, count: int = COUNT) -> list[str]:
    """Copies of ``text`` naming other identities: none when it names no identity term.

    Copy k puts the k-th term of ``pool`` (skipping terms the text already names) in place of
    the first identity it names, the next pool term in place of the second, and so on, keeping
    the capitalisation of each replaced word."""
    named = identities(text)
    if not named:
        return []
    others = [t for t in pool if t not in named]
    out = []
    for k in range(min(count, len(others))):
        chosen = {term: others[(k + j) % len(others)] for j, term in enumerate(named)}
        out.append(NAMED.sub(partial(_replace, chosen), text))
    return out


def combine(scores: npt.NDArray[np.float64]) -> float:
    """One probability from the original's and its copies' probabilities: their mean."""
    return float(np.mean(scores))


def _text(item: Input) -> str:
    return item[1] if isinstance(item, tuple) else item


def _with_text(item: Input, text: str) -> Input:
    return (item[0], text) if isinstance(item, tuple) else text


def counterfactual_probabilities(
    probabilities: Callable[[Sequence[Input]], npt.NDArray[np.float64]],
    inputs: Sequence[Input],
    pool: Sequence[str] = SWAPS,
    count: int = COUNT,
) -> npt.NDArray[np.float64]:
    """``probabilities`` of each input, combined with those of its identity-swapped copies.

    Inputs are texts or (context, text) pairs; ``probabilities`` is called once, on the
    inputs followed by every copy."""
    batch: list[Input] = list(inputs)
    groups: list[list[int]] = []
    for i, item in enumerate(inputs):
        copies = swaps(_text(item), pool, count)
        groups.append([i, *range(len(batch), len(batch) + len(copies))])
        batch.extend(_with_text(item, c) for c in copies)
    if len(batch) == len(inputs):
        return probabilities(inputs) if inputs else np.zeros(0, dtype=np.float64)
    scores = np.asarray(probabilities(batch), dtype=np.float64)
    return np.asarray([combine(scores[g]) for g in groups], dtype=np.float64)


def threshold_key(quantized: bool) -> str:
    """Where an adapter's ``backend_thresholds`` keep the threshold calibrated on counterfactual
    scores: ``onnx-int8+counterfactual`` for the int8 model, ``torch+counterfactual`` for fp32
    (written by ``python -m detectors.training.toxicity --recalibrate DIR --counterfactual``)."""
    return f"{'onnx-int8' if quantized else 'torch'}+counterfactual"


def extra_share(texts: Sequence[str], pool: Sequence[str] = SWAPS, count: int = COUNT) -> float:
    """Extra forward passes counterfactual scoring costs, as a share of the plain ones."""
    if not texts:
        return 0.0
    return sum(len(swaps(t, pool, count)) for t in texts) / len(texts)
