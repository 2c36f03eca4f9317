"""The labelled grounding sets under ``EVAL_DIR/hallucination``, read as (evidence, claim) pairs.

Label 1: the claim is supported by (entailed by, attributable to) the evidence; 0: it is not
(contradicted, neutral, hallucinated, partly hallucinated). Responses that make no claim
(``Generic``, ``Uncooperative`` alone) are left out: grounding has nothing to judge there.

| set | evidence → claim | licence |
|---|---|---|
| esnli | SNLI premise → hypothesis (dev, test); entailment vs the rest | MIT, CC BY-SA 4.0 |
| summedits | document → summary, consistent vs edited (SAMSum domain not shipped) | Apache-2.0 |
| begin | knowledge → dialogue response, fully attributable vs not | CC BY 4.0 |
| faithdial | knowledge → response of several dialogue models, BEGIN-style labels | MIT |
| dialfact | evidence → dialogue claim, SUPPORTS vs REFUTES / NOT ENOUGH INFO | BSD-3-Clause |

ANLI is there too but non-commercial: never trained on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TRAINABLE = ("esnli", "summedits", "begin", "faithdial", "dialfact")


@dataclass(frozen=True)
class Claim:
    evidence: str
    claim: str
    label: int
    source: str
    category: str = ""


def _esnli(root: Path) -> Iterator[Claim]:
    for split in ("dev", "test"):
        folder = root / "esnli"
        premises = (folder / f"s1.{split}").read_text().splitlines()
        hypotheses = (folder / f"s2.{split}").read_text().splitlines()
        labels = (folder / f"labels.{split}").read_text().splitlines()
        for premise, hypothesis, label in zip(premises, hypotheses, labels, strict=True):
            yield Claim(premise, hypothesis, int(label == "entailment"), "esnli", label)


def _summedits(root: Path) -> Iterator[Claim]:
    for path in sorted((root / "summedits").glob("summedits_*.json")):
        domain = path.stem.removeprefix("summedits_")
        for row in json.loads(path.read_text()):
            yield Claim(row["doc"], row["summary"], int(row["label"]), "summedits", domain)


def _begin(root: Path) -> Iterator[Claim]:
    labels = {"Fully attributable": 1, "Not fully attributable": 0}
    for path in sorted((root / "begin").glob("*/begin_dev_*.tsv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row["begin_label"] in labels:
                    yield Claim(row["knowledge"], row["response"], labels[row["begin_label"]],
                                "begin", row["model_name"])  # fmt: skip


def _faithdial_label(label: str) -> int | None:
    """1 supported, 0 hallucinated in whole or part, None: no claim (generic, uncooperative)."""
    words = {w.strip().lower().rstrip("t") for w in label.replace(".", ",").split(",")}
    if words & {"hallucination", "hallucinated", "partial hallucination"}:
        return 0
    if "entailmen" in words or "entailment" in words:
        return 1
    return None


def _faithdial(root: Path) -> Iterator[Claim]:
    for path in sorted((root / "faithdial").glob("*/*.csv")):
        model = path.parent.name
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                evidence = row.get("knowledge") or row.get("evidence") or ""
                claim = row.get("response") or row.get(model.lower()) or ""
                raw = row.get("begin_label") or row.get("BEGIN") or ""
                label = _faithdial_label(raw)
                if label is not None and evidence and claim:
                    yield Claim(evidence, claim, label, "faithdial", model)


def _dialfact(root: Path) -> Iterator[Claim]:
    for line in (root / "dialfact" / "testsmall.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("evidence_touse") and row.get("response"):
            label = row["response_label"]
            yield Claim(row["evidence_touse"], row["response"], int(label == "SUPPORTS"),
                        "dialfact", label)  # fmt: skip


READERS: dict[str, Callable[[Path], Iterator[Claim]]] = {
    "esnli": _esnli,
    "summedits": _summedits,
    "begin": _begin,
    "faithdial": _faithdial,
    "dialfact": _dialfact,
}


def load(hallucination_dir: Path, sources: tuple[str, ...] = TRAINABLE) -> list[Claim]:
    """Every pair of ``sources`` (deduplicated within a set)."""
    out: list[Claim] = []
    for source in sources:
        seen: set[tuple[str, str]] = set()
        for claim in READERS[source](hallucination_dir):
            key = (claim.evidence, claim.claim)
            if claim.evidence.strip() and claim.claim.strip() and key not in seen:
                seen.add(key)
                out.append(claim)
    return out
