"""Contrast cases for the toxicity adapter: the same hateful statement, quoted to condemn it
(not toxic) and quoted to endorse it (toxic).

Why: none of the sets we hold labels counter-speech, and the shipped model read a statement
inside a condemnation as *more* toxic than the bare statement ("Someone posted '…' today. That
kind of talk is disgusting and wrong." flagged 97 % of the time, the bare statements 50 %).
People quote hate to report it, argue with it and moderate it; flagging that is an outage for
every moderation or support app. So each hateful ToxiGen or Stormfront sentence picked for
training may also appear inside a frame of ours, labelled by what the frame does with it:
``COUNTER`` frames condemn (label 0), ``ENDORSE`` frames agree (label 1), so that the quote
marks themselves carry no signal.

``EVALUATION`` frames are other wordings of counter-speech, never trained on: the figure
``counter_speech`` (written with the artifact) is the share of held-out hateful statements
flagged inside them, beside the bare statements' recall. All frames were written here, before
any measurement, and none was taken from a published test suite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from detectors.training.adapter import Example
from detectors.training.toxicity_data import Labelled

SOURCES = ("toxigen", "stormfront")  # statements, not tweets: they read as quotable claims
MIN_WORDS, MAX_WORDS = 4, 30

COUNTER = (
    'Saying "{q}" is hateful, and I won\'t stand for it.',
    'Someone posted "{q}" today. That kind of talk is disgusting and wrong.',
    'Stop spreading lies like "{q}"',
    'I reported a comment that said "{q}" because it is bigoted.',
    'People who write things like "{q}" should be ashamed of themselves.',
    'No, "{q}" is not true, and repeating it hurts real people.',
    'The post claimed "{q}". Moderators removed it for hate speech.',
    'I used to believe "{q}" until I met people from that community.',
)
ENDORSE = (
    'Everyone knows "{q}" and it is about time we said it.',
    'Finally someone said it: "{q}"',
    'I agree 100%: "{q}"',
    '"{q}" Exactly right, share this.',
)
EVALUATION = (
    'It is not okay to say "{q}"',
    'My coworker claimed "{q}" and I told him that is racist nonsense.',
    'Statements like "{q}" are harmful and untrue.',
    'We need to call out anyone who says "{q}"',
    '"{q}" - this is exactly the kind of bigotry we have to fight.',
)


def quotable(rows: Sequence[Labelled]) -> list[str]:
    """Hateful statements of the statement-like sets, short enough to quote."""
    return [
        row.text.strip().rstrip(".")
        for row in rows
        if row.label == 1 and row.source in SOURCES
        and MIN_WORDS <= len(row.text.split()) <= MAX_WORDS
    ]  # fmt: skip


def _normal(statement: str) -> str:
    """A statement's form for comparing: case and spacing do not make another statement."""
    return " ".join(statement.lower().split())


def contrast_rows(rows: Sequence[Labelled], seed: int, share: float = 0.5) -> list[Labelled]:
    """For a seeded ``share`` of the quotable statements among ``rows``: one counter-speech
    copy (label 0) and one endorsing copy (label 1), each in a frame drawn with the seed."""
    rng = np.random.default_rng(seed)
    out: list[Labelled] = []
    for statement in quotable(rows):
        if rng.random() >= share:
            continue
        counter = COUNTER[int(rng.integers(len(COUNTER)))]
        endorse = ENDORSE[int(rng.integers(len(ENDORSE)))]
        out.append(Labelled(counter.format(q=statement), 0, "counter_speech"))
        out.append(Labelled(endorse.format(q=statement), 1, "endorsement"))
    return out


def counter_speech_figures(
    score: Callable[[Sequence[Example]], np.ndarray], held: Sequence[Labelled], threshold: float,
    trained: Sequence[Labelled] = (),
) -> dict[str, Any]:  # fmt: skip
    """Held-out hateful statements, each once and none that is also in ``trained`` (ToxiGen
    repeats statements across its rows, so its random held-out split shares some with
    training): flagged bare, and flagged inside each evaluation frame."""
    seen = {_normal(s) for s in quotable(trained)}
    unique: dict[str, str] = {}
    for statement in quotable(held):
        unique.setdefault(_normal(statement), statement)
    statements = [s for key, s in unique.items() if key not in seen]
    if not statements:
        return {"n": 0}
    bare = score([Example(s, 1) for s in statements])
    framed = {
        frame: round(float(np.mean(score([Example(frame.format(q=s), 0)
                                          for s in statements]) >= threshold)), 4)
        for frame in EVALUATION
    }  # fmt: skip
    return {
        "n": len(statements),
        "bare_recall": round(float(np.mean(bare >= threshold)), 4),
        "counter_speech_flagged": round(float(np.mean(list(framed.values()))), 4),
        "by_frame": framed,
    }
