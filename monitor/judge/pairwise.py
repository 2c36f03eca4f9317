"""Canary against stable on the same prompts: pairing, both position orders, window win rates.

``PairBuffer`` holds, per (model, normalised prompt hash), the latest answer of each side
for at most ``max_age_s`` and at most ``max_pending`` prompts (oldest evicted first, counted),
and hands out a ``Pair`` once both sides answered the same prompt. The judge then sees the
pair twice, canary first and stable first: ``combine`` turns the two verdicts into one
outcome for the canary; verdicts that disagree once the positions are swapped are ties, so a
judge that prefers a position (not an answer) moves nothing. ``PairwiseWindows`` gathers
outcomes per (model, canary version, window) and gives each closed window its win rate
with the paired bootstrap interval (bootstrap.py).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.ingest.events import Event
from monitor.judge.bootstrap import LOSS, TIE, WIN, WinRate, paired_bootstrap
from monitor.judge.parsing import Winner

_SPACE = re.compile(r"\s+")


def prompt_key(prompt: str) -> str:
    """A hash of the prompt with case and whitespace normalised: the pairing key."""
    normal = _SPACE.sub(" ", prompt).strip().lower()
    return hashlib.blake2b(normal.encode(), digest_size=12).hexdigest()


def combine(canary_first: Winner, stable_first: Winner) -> float:
    """The canary's outcome from two verdicts: ``canary_first`` judged (A=canary, B=stable),
    ``stable_first`` judged (A=stable, B=canary). Agreement → win or loss; else a tie."""
    first = {"A": WIN, "B": LOSS, "tie": TIE}[canary_first]
    second = {"A": LOSS, "B": WIN, "tie": TIE}[stable_first]
    return first if first == second else TIE


@dataclass(frozen=True)
class Pair:
    """One prompt answered by both sides; ``time_ms`` is the later event's time."""

    key: str
    prompt: str
    canary: Event
    stable: Event

    @property
    def time_ms(self) -> int:
        return max(self.canary.timestamp_ms, self.stable.timestamp_ms)


@dataclass
class PairBuffer:
    """Bounded memory of unpaired answers. ``offer`` returns a ``Pair`` when the event
    completes one (both sides' events are then forgotten), else ``None``."""

    canary_deployment: str = "canary"
    stable_deployment: str = "stable"
    max_age_s: float = 600.0
    max_pending: int = 10_000
    clock: Callable[[], float] = time.monotonic
    evicted: int = 0
    _pending: OrderedDict[tuple[str, str], tuple[float, dict[str, Event]]] = field(
        default_factory=OrderedDict
    )

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {self.max_pending}")
        if self.canary_deployment == self.stable_deployment:
            raise ValueError("canary_deployment and stable_deployment must differ")

    def __len__(self) -> int:
        return len(self._pending)

    def offer(self, event: Event, key: str | None = None) -> Pair | None:
        """``key``: the prompt's ``prompt_key``, when the caller has it already."""
        if event.deployment not in (self.canary_deployment, self.stable_deployment):
            return None
        if event.status != "ok" or not event.response:
            return None
        prompt = event.prompt_text
        if not prompt:
            return None
        now = self.clock()
        self._expire(now)
        slot = (event.model, key or prompt_key(prompt))
        _, sides = self._pending.get(slot, (now, {}))
        sides[event.deployment] = event
        canary, stable = sides.get(self.canary_deployment), sides.get(self.stable_deployment)
        if canary is not None and stable is not None:
            self._pending.pop(slot, None)
            return Pair(slot[1], prompt, canary, stable)
        self._pending[slot] = (now, sides)
        self._pending.move_to_end(slot)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.evicted += 1
        return None

    def _expire(self, now: float) -> None:
        while self._pending:
            slot, (seen, _) = next(iter(self._pending.items()))
            if now - seen <= self.max_age_s:
                return
            self._pending.popitem(last=False)
            self.evicted += 1


@dataclass(frozen=True)
class PairwiseWindow:
    """A window's pairwise result for one canary version against stable."""

    model: str
    canary_version: str
    stable_versions: tuple[str, ...]
    window_start_ms: int
    window_end_ms: int
    win_rate: WinRate


Slot = tuple[str, str, int]  # (model, canary version, window start ms)


@dataclass
class PairwiseWindows:
    """Outcomes per (model, canary version, window); ``close(watermark_ms)`` returns the
    windows that ended at least ``lateness_ms`` before the watermark. A closed window's
    outcomes are kept (the newest ``max_closed`` windows), so a pair judged after its window
    closed (a judge behind a backlog) reopens it whole: its next result is the window's, every
    pair in it, never the late pairs alone."""

    window_s: int = 300
    lateness_ms: int = 0
    confidence: float = 0.95
    resamples: int = 2000
    max_closed: int = 1024
    _open: dict[Slot, tuple[list[float], set[str]]] = field(default_factory=dict)
    _closed: dict[Slot, tuple[list[float], set[str]]] = field(default_factory=dict)

    def add(self, pair: Pair, outcome: float) -> None:
        size = self.window_s * 1000
        start = pair.time_ms - pair.time_ms % size
        slot = (pair.canary.model, pair.canary.model_version, start)
        if slot not in self._open and slot in self._closed:
            self._open[slot] = self._closed.pop(slot)
        outcomes, stables = self._open.setdefault(slot, ([], set()))
        outcomes.append(outcome)
        stables.add(pair.stable.model_version)

    def close(self, watermark_ms: int) -> list[PairwiseWindow]:
        size = self.window_s * 1000
        done = [s for s in self._open if s[2] + size + self.lateness_ms <= watermark_ms]
        return [self._result(slot) for slot in sorted(done, key=lambda s: s[2])]

    def close_all(self) -> list[PairwiseWindow]:
        return [self._result(slot) for slot in sorted(self._open, key=lambda s: s[2])]

    def _result(self, slot: Slot) -> PairwiseWindow:
        outcomes, stables = self._open.pop(slot)
        self._closed[slot] = (outcomes, stables)
        while len(self._closed) > self.max_closed:  # the oldest closed first
            del self._closed[next(iter(self._closed))]
        model, version, start = slot
        seed = int.from_bytes(hashlib.blake2b(repr(slot).encode(), digest_size=4).digest())
        rate = paired_bootstrap(
            outcomes, confidence=self.confidence, resamples=self.resamples, seed=seed
        )
        return PairwiseWindow(
            model, version, tuple(sorted(stables)), start, start + self.window_s * 1000, rate
        )
