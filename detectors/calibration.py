"""The false-positive rates on benign traffic that ship with each detector's calibration.

Read from the artifacts themselves (the toxicity adapter's or head's metadata, the injection
calibration and the instruction model's, the hallucination detector's measurement on right
answers), so the figures the policy is checked against are the ones measured for the weights
and thresholds that run. A detector without a measured rate is left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).parent / "assets"


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def measured_false_positive_rates(
    assets: Path = ASSETS, instruction_model: bool = True, shipped_hallucination: bool = True
) -> dict[str, float]:
    """Detector name → its false-positive rate on held-out benign requests and answers (for
    injection with the instruction model on: per event with one context passage; for
    hallucination, on right answers, unless ``shipped_hallucination`` is off because another
    grounding model or threshold runs, which the figure does not describe)."""
    rates: dict[str, float] = {}
    adapter = _read(assets / "toxicity" / "adapter.json").get("metadata", {})
    head = _read(assets / "toxicity_head.json").get("metadata", {})
    toxicity = adapter.get("figures", {}).get("benign_held_out_fpr")
    if toxicity is None:
        toxicity = head.get("neutral_held_out_fpr")
    injection = _read(assets / "injection.json").get("metadata", {}).get("held_out_fpr_pooled")
    passages = _passage_fpr(_read(assets / "instructions" / "adapter.json").get("metadata", {}))
    if instruction_model and isinstance(injection, int | float) and passages is not None:
        injection += passages  # an event with context is flagged by its prompt or a passage
    hallucination = _read(assets / "hallucination.json").get("metadata", {})
    grounding = hallucination.get("held_out_fpr_pooled") if shipped_hallucination else None
    for name, value in (("toxicity", toxicity), ("injection", injection),
                        ("hallucination", grounding)):  # fmt: skip
        if isinstance(value, int | float):
            rates[name] = float(value)
    return rates


def _passage_fpr(metadata: dict[str, Any]) -> float | None:
    """The instruction model's held-out false-positive rate on data passages, the higher of
    its fp32 and int8 figures (which one runs depends on the device)."""
    figures = [metadata.get("figures", {}), *metadata.get("figures_by_backend", {}).values()]
    rates = [f.get("held_out_passage_fpr") for f in figures if isinstance(f, dict)]
    found = [float(r) for r in rates if isinstance(r, int | float)]
    return max(found) if found else None
