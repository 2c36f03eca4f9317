"""The false-positive rates on benign traffic that ship with each detector's calibration.

Read from the artifacts themselves (the toxicity adapter's or head's metadata, the injection
calibration), so the figures the policy is checked against are the ones measured for the
weights and thresholds that run. A detector without a measured rate is left out.
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


def measured_false_positive_rates(assets: Path = ASSETS) -> dict[str, float]:
    """Detector name → its false-positive rate on held-out benign requests and answers."""
    rates: dict[str, float] = {}
    adapter = _read(assets / "toxicity" / "adapter.json").get("metadata", {})
    head = _read(assets / "toxicity_head.json").get("metadata", {})
    toxicity = adapter.get("figures", {}).get("benign_held_out_fpr")
    if toxicity is None:
        toxicity = head.get("neutral_held_out_fpr")
    injection = _read(assets / "injection.json").get("metadata", {}).get("held_out_fpr_pooled")
    for name, value in (("toxicity", toxicity), ("injection", injection)):
        if isinstance(value, int | float):
            rates[name] = float(value)
    return rates
