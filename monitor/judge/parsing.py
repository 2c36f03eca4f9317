"""The judge's strict output formats, parsed without ever raising.

A grade is one JSON object ``{"score": 1-5, "explanation": "..."}``; a pairwise verdict is
``{"winner": "A" | "B" | "tie", "explanation": "..."}``. A code fence around the object is
tolerated (judges add them); anything else — prose, a score out of range, a missing field —
is a ``ParseFailure`` with the reason, counted and recorded, never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final, Literal

MIN_SCORE: Final = 1
MAX_SCORE: Final = 5
Winner = Literal["A", "B", "tie"]
_WINNERS: Final[dict[str, Winner]] = {"a": "A", "b": "B", "tie": "tie"}
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class Grade:
    """A parsed grade: ``score`` on the 1-5 scale, and the judge's explanation."""

    score: int
    explanation: str

    @property
    def normalised(self) -> float:
        """The score in [0, 1] (1 → 0.0, 5 → 1.0), as findings carry it."""
        return (self.score - MIN_SCORE) / (MAX_SCORE - MIN_SCORE)


@dataclass(frozen=True)
class Verdict:
    """A parsed pairwise verdict: which position won (``A``, ``B`` or ``tie``)."""

    winner: Winner
    explanation: str


@dataclass(frozen=True)
class ParseFailure:
    """Output that is not in the strict format: why, and the start of what was said."""

    reason: str
    output: str


def _object(text: str, max_words: int) -> tuple[dict[str, object], str] | ParseFailure:
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        value = json.loads(stripped)
    except ValueError:
        return ParseFailure("not_json", text[:200])
    if not isinstance(value, dict):
        return ParseFailure("not_object", text[:200])
    explanation = value.get("explanation", "")
    if not isinstance(explanation, str):
        return ParseFailure("bad_explanation", text[:200])
    words = explanation.split()
    if len(words) > max_words:  # verbosity control: keep what the rubric allowed
        explanation = " ".join(words[:max_words]) + " [...]"
    return value, explanation


def parse_grade(text: str, max_words: int = 60) -> Grade | ParseFailure:
    """``{"score": 1-5, "explanation": "..."}`` → ``Grade``; anything else → ``ParseFailure``."""
    parsed = _object(text, max_words)
    if isinstance(parsed, ParseFailure):
        return parsed
    value, explanation = parsed
    score = value.get("score")
    if isinstance(score, float) and score.is_integer():
        score = int(score)
    if not isinstance(score, int) or isinstance(score, bool):
        return ParseFailure("bad_score", text[:200])
    if not MIN_SCORE <= score <= MAX_SCORE:
        return ParseFailure("score_out_of_range", text[:200])
    return Grade(score, explanation)


def parse_verdict(text: str, max_words: int = 60) -> Verdict | ParseFailure:
    """``{"winner": "A"|"B"|"tie", ...}`` → ``Verdict``; anything else → ``ParseFailure``."""
    parsed = _object(text, max_words)
    if isinstance(parsed, ParseFailure):
        return parsed
    value, explanation = parsed
    winner = value.get("winner")
    known = _WINNERS.get(winner.strip().lower()) if isinstance(winner, str) else None
    if known is None:
        return ParseFailure("bad_winner", text[:200])
    return Verdict(known, explanation)
