"""Benign traffic for false-positive rates: ordinary requests and answers, none of them toxic,
injected or ungrounded by construction.

Two halves, so a threshold chosen on one is measured on the other:

- ``calibration``: self-instruct seed tasks (instructions, inputs, outputs), HaluEval QA
  questions, knowledge passages and right answers of rows 0–249, and TruthfulQA's correct
  answers to its first 400 questions;
- ``held_out``: user-oriented self-instruct tasks, MT-Bench and Vicuna questions, HaluEval
  rows 250–499 and TruthfulQA's correct answers to the rest.

Requests and answers are kept apart (``kind``): a detector may score prompts, responses or both.
All from ``EVAL_DIR`` (see data.py): ``prompt_injection/benign_prompts/`` (Apache-2.0) and
``hallucination/`` (HaluEval MIT, TruthfulQA Apache-2.0).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["request", "answer"]
Half = Literal["calibration", "held_out"]
HALUEVAL_SPLIT = 250
TRUTHFULQA_SPLIT = 400


@dataclass(frozen=True)
class BenignText:
    text: str
    kind: Kind
    source: str


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _instructions(path: Path, source: str) -> list[BenignText]:
    out = []
    for row in read_jsonl(path):
        out.append(BenignText(str(row["instruction"]), "request", source))
        for instance in row.get("instances", []):
            if instance.get("input"):
                out.append(BenignText(str(instance["input"]), "request", source))
            if instance.get("output"):
                out.append(BenignText(str(instance["output"]), "answer", source))
    return out


def _questions(path: Path, source: str) -> list[BenignText]:
    return [
        BenignText(str(turn), "request", source)
        for row in read_jsonl(path)
        for turn in row["turns"]
    ]


def _halueval(path: Path, rows: slice) -> list[BenignText]:
    out = []
    for row in read_jsonl(path)[rows]:
        out.append(BenignText(str(row["question"]), "request", "halueval"))
        out.append(BenignText(str(row["knowledge"]), "answer", "halueval"))
        out.append(BenignText(str(row["right_answer"]), "answer", "halueval"))
    return out


def _truthfulqa(path: Path, rows: slice) -> list[BenignText]:
    with path.open(newline="") as f:
        return [
            BenignText(answer.strip(), "answer", "truthfulqa")
            for row in list(csv.DictReader(f))[rows]
            for answer in row["Correct Answers"].split(";")
            if answer.strip()
        ]


def benign_texts(eval_root: Path, half: Half) -> list[BenignText]:
    """The benign texts of one half (deduplicated, order kept)."""
    prompts = eval_root / "prompt_injection" / "benign_prompts"
    halueval = eval_root / "hallucination" / "halueval_qa_one-turn_data.jsonl"
    truthfulqa = eval_root / "hallucination" / "TruthfulQA.csv"
    if half == "calibration":
        texts = _instructions(prompts / "self_instruct_seed_tasks.jsonl", "self_instruct")
        texts += _halueval(halueval, slice(0, HALUEVAL_SPLIT))
        texts += _truthfulqa(truthfulqa, slice(0, TRUTHFULQA_SPLIT))
    else:
        texts = _instructions(prompts / "user_oriented_instructions.jsonl", "user_oriented")
        texts += _questions(prompts / "mt_bench_question.jsonl", "mt_bench")
        texts += _questions(prompts / "vicuna_bench_question.jsonl", "vicuna")
        texts += _halueval(halueval, slice(HALUEVAL_SPLIT, None))
        texts += _truthfulqa(truthfulqa, slice(TRUTHFULQA_SPLIT, None))
    seen: set[str] = set()
    unique = []
    for item in texts:
        if item.text.strip() and item.text not in seen:
            seen.add(item.text)
            unique.append(item)
    return unique
