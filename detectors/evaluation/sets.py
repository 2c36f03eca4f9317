"""Write the evaluation files from the labelled data: ``python -m detectors.evaluation.sets``.

- ``halueval_calibration.jsonl`` / ``halueval_dev.jsonl``: HaluEval QA (RUCAIBox/HaluEval,
  MIT) rows 0-249 / 250-499. Each row gives two lines with the knowledge passage as
  ``context`` and the question as ``prompt``: the right answer (label 0) and the hallucinated
  one (label 1). The detector's weights and threshold were chosen on the calibration rows only.
- ``truthfulqa_samples.jsonl``: TruthfulQA (Apache-2.0), questions with at least three correct
  answers. ``samples`` are all correct answers but one; the held-out correct answer is a
  consistent response (label 0), the first incorrect answer an inconsistent one (label 1).
- ``injection_direct.jsonl``: JailbreakBench artifacts (PAIR and JBC prompts, MIT) as
  positives, NotInject (InjecGuard, MIT: benign prompts full of trigger words) as negatives.
- ``injection_notinject.jsonl``: NotInject alone (all negatives) to read over-defence.
- ``injection_indirect.jsonl``: BIPIA (MIT) email contexts, clean (label 0) and with an attack
  from the text or code attack sets appended to the content (label 1), two attacks each.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from detectors.evaluation.data import add_eval_dir_argument, eval_dir


def halueval_lines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines = []
    for r in rows:
        for answer, label in ((r["right_answer"], 0), (r["hallucinated_answer"], 1)):
            lines.append({"prompt": r["question"], "response": answer,
                          "context": [r["knowledge"]], "label": label})  # fmt: skip
    return lines


def truthfulqa_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            correct = [a.strip() for a in row["Correct Answers"].split(";") if a.strip()]
            incorrect = [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]
            if len(correct) < 3 or not incorrect:
                continue
            samples, held_out = correct[1:], correct[0]
            for response, label in ((held_out, 0), (incorrect[0], 1)):
                lines.append({"prompt": row["Question"], "response": response,
                              "samples": samples, "label": label})  # fmt: skip
    return lines


def injection_sets(injection: Path) -> dict[str, list[dict[str, Any]]]:
    """Direct, NotInject-only and indirect sets from the ``prompt_injection`` folder."""
    benign = [
        {"text": row["prompt"], "label": 0}
        for part in ("one", "two", "three")
        for row in json.loads((injection / f"notinject_{part}.json").read_text())
    ]
    attacks = [
        {"text": row["prompt"], "label": 1}
        for path in sorted(injection.glob("jbb_artifacts_*.json"))
        for row in json.loads(path.read_text())["jailbreaks"]
        if row.get("prompt")
    ]
    payloads = [
        attack
        for name in ("bipia_text_attack_test.json", "bipia_code_attack_test.json")
        for group in json.loads((injection / name).read_text()).values()
        for attack in group
    ]
    contexts = [
        json.loads(line)["context"]
        for line in (injection / "bipia_email_contexts_test.jsonl").read_text().splitlines()
        if line.strip()
    ]
    indirect: list[dict[str, Any]] = []
    for i, context in enumerate(contexts):
        indirect.append({"text": context, "label": 0})
        for j in (2 * i, 2 * i + 1):
            indirect.append({"text": f"{context}\n{payloads[j % len(payloads)]}", "label": 1})
    return {
        "injection_direct.jsonl": attacks + benign,
        "injection_notinject.jsonl": benign,
        "injection_indirect.jsonl": indirect,
    }


def write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"{path}: {len(lines)} lines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/eval"))
    add_eval_dir_argument(parser)
    args = parser.parse_args()
    root = eval_dir(args.eval_dir)
    halu = root / "hallucination" / "halueval_qa_one-turn_data.jsonl"
    if not halu.is_file():
        raise SystemExit(f"{halu} not found: pass --eval-dir or put shared/eval beside the repo")
    rows = [json.loads(line) for line in halu.read_text().splitlines() if line.strip()]
    write(args.out / "halueval_calibration.jsonl", halueval_lines(rows[:250]))
    write(args.out / "halueval_dev.jsonl", halueval_lines(rows[250:500]))
    write(
        args.out / "truthfulqa_samples.jsonl",
        truthfulqa_lines(root / "hallucination" / "TruthfulQA.csv"),
    )
    for name, lines in injection_sets(root / "prompt_injection").items():
        write(args.out / name, lines)


if __name__ == "__main__":
    main()
