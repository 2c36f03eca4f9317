"""Write the hallucination evaluation files from ../shared/eval: ``python -m detectors.eval_sets``.

- ``halueval_calibration.jsonl`` / ``halueval_dev.jsonl``: HaluEval QA (RUCAIBox/HaluEval,
  MIT) rows 0-249 / 250-499. Each row gives two lines with the knowledge passage as
  ``context`` and the question as ``prompt``: the right answer (label 0) and the hallucinated
  one (label 1). The detector's weights and threshold were chosen on the calibration rows only.
- ``truthfulqa_samples.jsonl``: TruthfulQA (Apache-2.0), questions with at least three correct
  answers. ``samples`` are all correct answers but one; the held-out correct answer is a
  consistent response (label 0), the first incorrect answer an inconsistent one (label 1).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "hallucination"


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


def write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"{path}: {len(lines)} lines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/eval"))
    args = parser.parse_args()
    halu = EVAL / "halueval_qa_one-turn_data.jsonl"
    if not halu.is_file():
        raise SystemExit(f"{halu} not found: put ../shared/eval beside the repo")
    rows = [json.loads(line) for line in halu.read_text().splitlines() if line.strip()]
    write(args.out / "halueval_calibration.jsonl", halueval_lines(rows[:250]))
    write(args.out / "halueval_dev.jsonl", halueval_lines(rows[250:500]))
    write(args.out / "truthfulqa_samples.jsonl", truthfulqa_lines(EVAL / "TruthfulQA.csv"))


if __name__ == "__main__":
    main()
