"""Train the context-passage instruction model: ``python -m detectors.training.instructions``.

Indirect prompt injection hides an order for the assistant in data it reads (a retrieved page,
an email, a tool's output). Data should not give orders, so the question for a context
sentence is "is this a request addressed to an assistant?", whatever it asks for. The packaged
MiniLM is fine-tuned with LoRA (detectors/training/adapter.py) on single sentences:

- **instructions** (label 1): what people ask assistants — self-instruct seed task
  instructions, HaluEval questions 0–249, the sentences of at least four words of the human
  turns of the first half of hh-rlhf's harmless-base test dialogues (one or two sentences),
  MT-Bench questions (both turns: the second gives orders about the previous answer),
  NotInject part one, AdvBench and HarmBench behaviours;
- **data** (label 0): sentences of passages an assistant reads — SummEdits documents (news,
  podcasts, meetings, earnings and sales calls, sales emails, papers), BEGIN, FaithDial and
  DialFact knowledge, HaluEval knowledge (two quarters of the passages, by a hash of the text),
  the inputs and outputs of the self-instruct seed tasks, and the assistant turns of the same
  hh-rlhf dialogues.

A passage scores the maximum over its sentences. The threshold is the (1 − TARGET_FPR) quantile
of a third quarter of the passages, for fp32 and for the int8 model the CPU runs; the fourth
quarter is held out. Figures written beside the weights (``adapter.json``): the held-out
false-positive rate per source, the AUC of a synthetic indirect set of our own (held-out
passages, clean and with one held-out request appended: Vicuna, user-oriented tasks, the
other half of hh-rlhf, NotInject two and three), and BIPIA (emails, clean and attacked),
which nothing here was trained or chosen on. Licences: docs/detectors.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.adapted import INT8, AdaptedClassifier, AdapterSpec
from detectors.evaluation.benign import read_jsonl
from detectors.evaluation.data import add_eval_dir_argument, eval_dir
from detectors.evaluation.sets import injection_sets
from detectors.hallucination import sentences
from detectors.injection import INSTRUCTION, most_instruction_like, passage_sentences
from detectors.training import grounding_data
from detectors.training.adapter import Example, TrainConfig, train
from detectors.training.injection import HH_RLHF, auc, dialogue_turns

ARTIFACT = Path(__file__).resolve().parents[1] / "assets" / "instructions"
LABEL = INSTRUCTION
TARGET_FPR = 0.015
PARTS = 4  # passages by hash: 0, 1 train; 2 calibration; 3 held out
NEGATIVES_PER_POSITIVE = 1.5
SEED_TASKS = "self_instruct_seed_tasks.jsonl"
PASSAGE_SOURCES = ("summedits", "begin", "faithdial", "dialfact")


def part(text: str) -> int:
    """A passage's quarter, by a hash of its text: stable across runs and machines."""
    return int(hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest(), 16) % PARTS


def passages(root: Path) -> dict[str, list[str]]:
    """Data passages by source (deduplicated): documents and knowledge an assistant reads."""
    by_source: dict[str, list[str]] = {}
    for claim in grounding_data.load(root / "hallucination", PASSAGE_SOURCES):
        source = f"summedits_{claim.category}" if claim.source == "summedits" else claim.source
        by_source.setdefault(source, []).append(claim.evidence)
    halueval = read_jsonl(root / "hallucination" / "halueval_qa_one-turn_data.jsonl")
    by_source["halueval"] = [str(row["knowledge"]) for row in halueval]
    return {source: list(dict.fromkeys(texts)) for source, texts in by_source.items()}


MIN_REQUEST_WORDS = 4  # "Yes.", "Go on.", "Thanks!": replies in a dialogue, not requests


def _short(texts: Sequence[str]) -> list[str]:
    """The sentences of requests of one or two sentences (a longer turn mixes its ask with
    its story), each of at least ``MIN_REQUEST_WORDS`` words (a shorter one in a dialogue
    acknowledges, it does not ask)."""
    split = [sentences(t) for t in texts if t.strip()]
    return [s for found in split if len(found) <= 2
            for s in found if len(s.split()) >= MIN_REQUEST_WORDS]  # fmt: skip


def requests(root: Path, half: str) -> dict[str, list[str]]:
    """What people ask assistants, by source: the training half or the held-out half."""
    prompts = root / "prompt_injection"
    dialogues = dialogue_turns(root / HH_RLHF)
    halueval = read_jsonl(root / "hallucination" / "halueval_qa_one-turn_data.jsonl")

    def notinject(*parts: str) -> list[str]:
        files = [prompts / f"notinject_{p}.json" for p in parts]
        return [row["prompt"] for path in files for row in json.loads(path.read_text())]

    def column(name: str, field: str) -> list[str]:
        with (prompts / "harmful_behaviors" / name).open(newline="") as f:
            return [row[field] for row in csv.DictReader(f)]

    def questions(name: str) -> list[str]:
        rows = read_jsonl(prompts / "benign_prompts" / name)
        return [str(turn) for row in rows for turn in row["turns"]]

    half_point = len(dialogues) // 2
    if half == "train":
        seed = read_jsonl(prompts / "benign_prompts" / SEED_TASKS)
        return {
            "self_instruct": [str(row["instruction"]) for row in seed],
            "halueval": [str(row["question"]) for row in halueval[:250]],
            "hh_rlhf": _short([t for d in dialogues[:half_point] for t in d]),
            "notinject": notinject("one"),
            "advbench": column("advbench_harmful_behaviors.csv", "goal"),
            "harmbench": column("harmbench_behaviors_text_all.csv", "Behavior"),
            "mt_bench": questions("mt_bench_question.jsonl"),
        }
    oriented = read_jsonl(prompts / "benign_prompts" / "user_oriented_instructions.jsonl")
    return {
        "user_oriented": [str(row["instruction"]) for row in oriented],
        "vicuna": questions("vicuna_bench_question.jsonl"),
        "hh_rlhf": _short([t for d in dialogues[half_point:] for t in d]),
        "notinject": notinject("two", "three"),
    }


def assistant_turns(root: Path) -> list[str]:
    """The assistant turns of the first half of hh-rlhf's dialogues (answers give advice and
    ask back, but are not requests to an assistant)."""
    dialogues = dialogue_turns(root / HH_RLHF, "Assistant")
    return [t for d in dialogues[: len(dialogues) // 2] for t in d]


def seed_task_data(root: Path) -> list[str]:
    """The inputs and outputs of the self-instruct seed tasks: data handed to an assistant."""
    seed = read_jsonl(root / "prompt_injection" / "benign_prompts" / SEED_TASKS)
    return [str(instance[key]) for row in seed for instance in row.get("instances", [])
            for key in ("input", "output") if instance.get(key)]  # fmt: skip


def training_examples(root: Path, seed: int) -> list[Example]:
    """Instruction sentences (1) and data sentences (0), at most 1.5 data per instruction."""
    positives = list(dict.fromkeys(
        s for texts in requests(root, "train").values() for t in texts
        for s in passage_sentences(t)
    ))  # fmt: skip
    documents = [t for texts in passages(root).values() for t in texts if part(t) < 2]
    data = list(dict.fromkeys(
        s for t in documents + seed_task_data(root) for s in passage_sentences(t)
    ))  # fmt: skip
    answers = list(dict.fromkeys(s for t in assistant_turns(root) for s in passage_sentences(t)))
    rng = random.Random(seed)  # noqa: S311 - a seeded shuffle, not a secret
    rng.shuffle(answers)
    room = max(0, int(NEGATIVES_PER_POSITIVE * len(positives)) - len(data))
    asked = set(positives)
    negatives = data + [s for s in answers[:room] if s not in asked]
    return [Example(s, 1) for s in positives] + [Example(s, 0) for s in negatives]


Scorer = Callable[[Sequence[str]], npt.NDArray[np.float64]]


def passage_scores(probabilities: Scorer, texts: Sequence[str]) -> np.ndarray:
    """Per passage, the most instruction-like sentence's probability, as the detector reads it."""
    return np.asarray(most_instruction_like(probabilities, texts), dtype=np.float64)


def synthetic_indirect(root: Path, seed: int) -> tuple[list[str], list[int]]:
    """Held-out passages, each clean (0) and with one held-out one-sentence request (1)."""
    rng = random.Random(seed)  # noqa: S311 - a seeded shuffle, not a secret
    held = [t for texts in passages(root).values() for t in texts if part(t) == 3]
    asks = [t for texts in requests(root, "held_out").values() for t in texts
            if len(sentences(t)) == 1]  # fmt: skip
    texts, labels = [], []
    for passage in held:
        texts += [passage, f"{passage}\n{rng.choice(asks)}"]
        labels += [0, 1]
    return texts, labels


def figures(probabilities: Scorer, root: Path, seed: int) -> dict[str, Any]:
    """The threshold at TARGET_FPR on calibration passages, and every figure beside it."""
    by_source = passages(root)
    calibration = [t for texts in by_source.values() for t in texts if part(t) == 2]
    threshold = round(float(np.quantile(passage_scores(probabilities, calibration),
                                        1 - TARGET_FPR)), 3)  # fmt: skip
    held: dict[str, Any] = {}
    for source, texts in by_source.items():
        scores = passage_scores(probabilities, [t for t in texts if part(t) == 3])
        held[source] = {"n": len(scores), "fpr": round(float(np.mean(scores >= threshold)), 4)}
    pooled_n = sum(v["n"] for v in held.values())
    pooled = sum(v["fpr"] * v["n"] for v in held.values()) / max(1, pooled_n)
    texts, labels = synthetic_indirect(root, seed)
    synthetic = passage_scores(probabilities, texts)
    bipia = injection_sets(root / "prompt_injection")["injection_indirect.jsonl"]
    bipia_scores = passage_scores(probabilities, [r["text"] for r in bipia])
    bipia_labels = [int(r["label"]) for r in bipia]
    flagged = [s >= threshold for s in bipia_scores]
    return {
        "threshold": threshold, "target_fpr": TARGET_FPR,
        "calibration_passages": len(calibration),
        "held_out_passage_fpr": round(pooled, 4), "held_out_passages": pooled_n,
        "held_out_by_source": held,
        "synthetic_indirect": {"auc": auc(labels, list(synthetic)), "n": len(labels)},
        "bipia": {
            "auc": auc(bipia_labels, list(bipia_scores)), "n": len(bipia),
            "recall": round(float(np.mean([f for f, y in zip(flagged, bipia_labels,
                                                            strict=True) if y])), 4),
            "clean_flagged": round(float(np.mean([f for f, y in zip(flagged, bipia_labels,
                                                                   strict=True) if not y])), 4),
        },
    }  # fmt: skip


def calibrate(directory: Path, root: Path, seed: int) -> dict[str, Any]:
    """Thresholds and figures for fp32 and for int8 (the CPU path), written to ``directory``."""
    fp32 = AdaptedClassifier(directory, device="cpu", backend="onnx")
    fp32_figures = figures(fp32.probabilities, root, seed)
    int8 = AdaptedClassifier(directory, device="cpu", backend=INT8)
    int8_figures = figures(int8.probabilities, root, seed)
    spec = AdapterSpec.read(directory)
    metadata = spec.metadata | {"figures": fp32_figures, "figures_by_backend": {INT8: int8_figures}}
    AdapterSpec(spec.labels, spec.rank, spec.alpha, spec.max_length,
                {LABEL: fp32_figures["threshold"]}, metadata,
                {INT8: {LABEL: int8_figures["threshold"]}}).write(directory)  # fmt: skip
    return {"fp32": fp32_figures, INT8: int8_figures}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_eval_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=ARTIFACT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--recalibrate", type=Path, default=None,
        help="a saved adapter: recompute its thresholds and figures, no training",
    )  # fmt: skip
    args = parser.parse_args(argv)
    root = eval_dir(args.eval_dir)
    directory = args.recalibrate
    if directory is None:
        examples = training_examples(root, args.seed)
        positives = sum(e.label for e in examples)
        print(f"training on {positives} instruction and {len(examples) - positives} data sentences")
        config = TrainConfig(labels=(LABEL,), rank=8, alpha=16, max_length=64,
                             epochs=args.epochs, seed=args.seed, device=args.device)  # fmt: skip
        started = time.perf_counter()
        model = train(examples, config)
        meta = {"name": LABEL, "data": "see detectors/training/instructions.py",
                "train_examples": len(examples), "train_positives": positives,
                "train_seconds": round(time.perf_counter() - started), "seed": args.seed,
                "epochs": args.epochs, "licences": "docs/detectors.md"}  # fmt: skip
        model.save(args.out, {LABEL: 0.5}, meta)
        directory = args.out
    report = calibrate(directory, root, args.seed)
    print(json.dumps(report, indent=1))
    print(f"thresholds and figures written to {directory}")


if __name__ == "__main__":
    main()
