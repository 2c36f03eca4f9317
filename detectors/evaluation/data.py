"""Where the labelled evaluation data lives, for the training, evaluation and bench scripts.

Every script takes ``--eval-dir``; without it, ``LLM_MONITOR_EVAL_DIR``; without that, the
``shared/eval`` folder beside the repository (read in place, never copied).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EVAL_DIR_ENV = "LLM_MONITOR_EVAL_DIR"
BESIDE_REPO = Path(__file__).resolve().parents[3] / "shared" / "eval"


def eval_dir(override: Path | None = None) -> Path:
    """The evaluation data root: the argument, else the environment, else beside the repo."""
    if override is not None:
        return override
    from_env = os.environ.get(EVAL_DIR_ENV)
    return Path(from_env) if from_env else BESIDE_REPO


def add_eval_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--eval-dir DIR`` on a script's parser (default: see ``eval_dir``)."""
    parser.add_argument(
        "--eval-dir",
        type=Path,
        default=None,
        help=f"labelled data root (default: ${EVAL_DIR_ENV}, else {BESIDE_REPO})",
    )
