"""The promotion gate of each canary version, from the LLM judge's pairwise windows.

The judge role (monitor/judge/) closes a window of canary-vs-stable comparisons per (model,
canary version) and publishes its win rate with a paired bootstrap interval. The policy turns
the newest window of each canary version into a gate verdict with ``promotion_gate``:

- ``pass``: the win rate's lower bound is at least the threshold (the canary is not worse than
  stable beyond the margin);
- ``fail``: it is below;
- ``inconclusive``: fewer than ``min_pairs`` prompts compared — never a verdict.

``GateBook`` keeps each version's gate in a caller-supplied mapping (JSON text; a faust table
in the worker, so a restart keeps it). Only a window at least as new as the stored one moves
the gate: a replayed older window is history, and the same window again changes nothing.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from monitor.judge.bootstrap import promotion_gate
from monitor.judge.pairwise import PairwiseWindow
from monitor.policy.state import decode_state

GATE_RULE = "gate.judge_win_rate"
JUDGE_RULE = "rollback.judge_win_rate"
Verdict = Literal["pass", "fail", "inconclusive"]
PASSED: Final = "pass"
FAILED: Final = "fail"
INCONCLUSIVE: Final = "inconclusive"
# llm_monitor_promotion_gate's values: Prometheus-side gates read `== 1`.
GATE_VALUES = {PASSED: 1.0, FAILED: 0.0, INCONCLUSIVE: -1.0}


class PromotionGate(msgspec.Struct, kw_only=True):
    """A canary version's gate, as its newest judge window decided it."""

    model: str
    model_version: str
    deployment: str
    verdict: Verdict
    win_rate: float
    low: float
    high: float
    n: int
    threshold: float
    min_pairs: int
    window_start_ms: int
    window_end_ms: int

    @property
    def key(self) -> str:
        return f"{self.model}/{self.model_version}/{self.deployment}"


def gate_of(
    window: PairwiseWindow, deployment: str, threshold: float, min_pairs: int
) -> PromotionGate:
    """The gate ``window`` gives its canary version at ``threshold`` with ``min_pairs``."""
    r = window.win_rate
    passed = promotion_gate(r.low, threshold, n=r.n, min_pairs=min_pairs)
    verdict: Verdict = INCONCLUSIVE if passed is None else PASSED if passed else FAILED
    return PromotionGate(
        model=window.model, model_version=window.canary_version, deployment=deployment,
        verdict=verdict, win_rate=r.value, low=r.low, high=r.high, n=r.n, threshold=threshold,
        min_pairs=min_pairs, window_start_ms=window.window_start_ms,
        window_end_ms=window.window_end_ms,
    )  # fmt: skip


@dataclass(frozen=True)
class GateChange:
    """What storing a gate did: ``changed`` when its verdict differs from the stored one (or
    there was none); ``stale`` when the window is older than the stored one (nothing stored)."""

    gate: PromotionGate
    changed: bool
    stale: bool = False


_decoder = msgspec.json.Decoder(PromotionGate)


class GateBook:
    """Each canary version's newest gate, in ``store`` under ``<model>/<version>/<deployment>``."""

    def __init__(self, store: MutableMapping[str, str] | None = None) -> None:
        self.store: MutableMapping[str, str] = {} if store is None else store

    def get(self, model: str, version: str, deployment: str) -> PromotionGate | None:
        return self._decode(self.store.get(f"{model}/{version}/{deployment}"))

    def all(self) -> list[PromotionGate]:
        gates = [self._decode(v) for v in list(self.store.values())]
        return [g for g in gates if g is not None]

    def update(self, gate: PromotionGate) -> GateChange:
        """Store ``gate`` unless a newer window's is stored already."""
        stored = self.get(gate.model, gate.model_version, gate.deployment)
        if stored is not None and gate.window_start_ms < stored.window_start_ms:
            return GateChange(stored, changed=False, stale=True)
        self.store[gate.key] = msgspec.json.encode(gate).decode()
        return GateChange(gate, changed=stored is None or stored.verdict != gate.verdict)

    @staticmethod
    def _decode(raw: str | None) -> PromotionGate | None:
        """A stored gate (one that does not decode is forgotten: the next window sets it)."""
        return decode_state(_decoder, raw, "promotion gate")
