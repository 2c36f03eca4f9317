"""The labelled toxicity sets under ``EVAL_DIR/toxicity``, read into one shape.

Every row is a ``Labelled`` text: 1 = toxic (hateful, abusive, offensive or an unsafe reply),
0 = not, with the set it came from, its split and, where the set has one, a category (the
targeted group, the kind of unsafe reply). The sets differ in source and labelling guide,
which is the point: a detector trained on several and measured on the one left out shows
whether it learned toxicity or one set's style.

| set | text | positive | licence |
|---|---|---|---|
| toxigen | machine-written statements about 13 groups | ``hate`` | MIT |
| stormfront | white-supremacist forum sentences | ``hate`` (not ``relation``, ``idk``) | CC BY-SA |
| tweeteval_hate | tweets (SemEval-2019 HatEval) | 1 | task terms |
| tweeteval_offensive | tweets (OffensEval / OLID) | 1 | task terms |
| diasafety | a chatbot reply in its context (3 of 5 kinds) | ``Unsafe`` | Apache-2.0 |
| convabuse | users' turns to conversational agents | annotators' mean abuse level < 0 | CC BY 4.0 |
| davidson | tweets | hate or offensive | MIT |
| ethos | comments | ``isHate`` ≥ 0.5; evaluation only, never in shipped weights | GPL-3.0 |
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TRAINABLE = (
    "toxigen",
    "stormfront",
    "tweeteval_hate",
    "tweeteval_offensive",
    "diasafety",
    "convabuse",
    "davidson",
)
EVALUATION_ONLY = ("ethos",)
MARKUP = re.compile(r"\bRT\b|@\w+:?|https?://\S+|#(?=\w)")


@dataclass(frozen=True)
class Labelled:
    """One labelled text. ``split`` is the set's own (train/val/test) or ``all``."""

    text: str
    label: int
    source: str
    split: str = "all"
    category: str = ""
    context: str = ""


def clean(text: str) -> str:
    """Strip Twitter markup (RT, @mentions, URLs, hashtag signs) and HTML entities."""
    return " ".join(MARKUP.sub(" ", html.unescape(text)).split())


def _toxigen(root: Path) -> Iterator[Labelled]:
    for line in (root / "toxigen_statements.jsonl").read_text().splitlines():
        row = json.loads(line)
        yield Labelled(row["text"], int(row["label"] == "hate"), "toxigen", category=row["group"])


def _stormfront(root: Path) -> Iterator[Labelled]:
    for line in (root / "stormfront_hate.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["label"] in ("hate", "noHate"):
            yield Labelled(row["text"], int(row["label"] == "hate"), "stormfront")


def _tweeteval(task: str) -> Callable[[Path], Iterator[Labelled]]:
    def read(root: Path) -> Iterator[Labelled]:
        folder = root / "tweeteval" / task
        for split in ("train", "val", "test"):
            texts = (folder / f"{split}_text.txt").read_text().splitlines()
            labels = (folder / f"{split}_labels.txt").read_text().split()
            for text, label in zip(texts, labels, strict=True):
                cleaned = clean(text)
                if cleaned:
                    yield Labelled(cleaned, int(label), f"tweeteval_{task}", split)

    return read


# DiaSafety's other kinds of unsafe reply (unauthorized medical or legal expertise, ignoring
# a risk) are harms of another sort: trained on, they teach that advice is toxic.
DIASAFETY_TOXIC_KINDS = ("Offending User", "Toxicity Agreement", "Biased Opinion")


def _diasafety(root: Path) -> Iterator[Labelled]:
    for split in ("train", "val", "test"):
        for row in json.loads((root / "diasafety" / f"{split}.json").read_text()):
            if row["category"] not in DIASAFETY_TOXIC_KINDS:
                continue
            yield Labelled(
                row["response"], int(row["label"] == "Unsafe"), "diasafety", split,
                category=row["category"], context=row["context"],
            )  # fmt: skip


def _convabuse(root: Path) -> Iterator[Labelled]:
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        with (root / "convabuse" / f"ConvAbuseEMNLP{name}.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                levels = []
                for annotator in range(1, 9):
                    for level in (1, 0, -1, -2, -3):
                        if row.get(f"Annotator{annotator}_is_abuse.{level}") == "1":
                            levels.append(level)
                text = (row.get("user") or "").strip()
                if text and levels:
                    label = int(sum(levels) / len(levels) < 0)
                    yield Labelled(text, label, "convabuse", split, context=row.get("agent", ""))


def _davidson(root: Path) -> Iterator[Labelled]:
    with (root / "davidson_labeled_data.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            cleaned = clean(row["tweet"])
            if cleaned:
                yield Labelled(cleaned, int(row["class"] in ("0", "1")), "davidson")


def _ethos(root: Path) -> Iterator[Labelled]:
    with (root / "ethos" / "ethos_data" / "Ethos_Dataset_Binary.csv").open(newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            yield Labelled(row["comment"].strip(), int(float(row["isHate"]) >= 0.5), "ethos")


READERS: dict[str, Callable[[Path], Iterator[Labelled]]] = {
    "toxigen": _toxigen,
    "stormfront": _stormfront,
    "tweeteval_hate": _tweeteval("hate"),
    "tweeteval_offensive": _tweeteval("offensive"),
    "diasafety": _diasafety,
    "convabuse": _convabuse,
    "davidson": _davidson,
    "ethos": _ethos,
}


def load(
    toxicity_dir: Path, sources: tuple[str, ...] = TRAINABLE + EVALUATION_ONLY
) -> list[Labelled]:
    """Every row of ``sources`` (deduplicated by text within a set)."""
    rows: list[Labelled] = []
    for source in sources:
        seen: set[str] = set()
        for row in READERS[source](toxicity_dir):
            if row.text and row.text not in seen:
                seen.add(row.text)
                rows.append(row)
    return rows
