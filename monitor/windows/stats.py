"""Tumbling windows per (model, model_version, deployment): mergeable partial aggregates.

Scorers build a ``WindowPartial`` per series and window from each batch; the aggregator merges
partials into a state, so any number of scorers can feed one aggregator and the result does
not depend on how events were batched. Latency quantiles come from DDSketch (1 % relative
accuracy), which merges exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec
from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.proto import DDSketchProto

from detectors.base import Finding
from detectors.bias import group_disparities
from monitor.ingest.events import Event
from monitor.storage.columns import EpochMs

RELATIVE_ACCURACY: Final = 0.01


def encode_sketch(sketch: DDSketch) -> bytes:
    proto = DDSketchProto.to_proto(sketch)  # type: ignore[no-untyped-call]
    return bytes(proto.SerializeToString())


def decode_sketch(data: bytes) -> DDSketch:
    if not data:
        return DDSketch(RELATIVE_ACCURACY)
    message = DDSketchMessage()
    message.ParseFromString(data)
    sketch: DDSketch = DDSketchProto.from_proto(message)  # type: ignore[no-untyped-call]
    return sketch


class WindowPartial(msgspec.Struct, kw_only=True):
    """Counts and sketches for one series in one window, from some subset of its events."""

    model: str
    model_version: str
    deployment: str
    window_start_ms: int
    window_s: int
    events: int = 0
    errors: int = 0
    timeouts: int = 0
    refusals: int = 0
    complaints: int = 0
    latency_count: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    latency_sketch: bytes = b""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    flags: dict[str, int] = msgspec.field(default_factory=dict)
    groups: dict[str, list[float]] = msgspec.field(default_factory=dict)
    max_event_time_ms: int = 0

    @property
    def key(self) -> str:
        """Table key: series and window start; also the Kafka key used to route partials."""
        return f"{self.model}|{self.model_version}|{self.deployment}|{self.window_start_ms}"

    def merge(self, other: WindowPartial) -> WindowPartial:
        """A new partial holding both; the sketches merge exactly."""
        sketch = decode_sketch(self.latency_sketch)
        if other.latency_sketch:
            sketch.merge(decode_sketch(other.latency_sketch))
        flags = dict(self.flags)
        for name, count in other.flags.items():
            flags[name] = flags.get(name, 0) + count
        groups = {g: list(v) for g, v in self.groups.items()}
        for group, counts in other.groups.items():
            groups[group] = add_group_counts(groups.get(group), counts)
        return WindowPartial(
            model=self.model,
            model_version=self.model_version,
            deployment=self.deployment,
            window_start_ms=self.window_start_ms,
            window_s=self.window_s,
            events=self.events + other.events,
            errors=self.errors + other.errors,
            timeouts=self.timeouts + other.timeouts,
            refusals=self.refusals + other.refusals,
            complaints=self.complaints + other.complaints,
            latency_count=self.latency_count + other.latency_count,
            latency_sum_ms=self.latency_sum_ms + other.latency_sum_ms,
            latency_max_ms=max(self.latency_max_ms, other.latency_max_ms),
            latency_sketch=encode_sketch(sketch) if sketch.count else b"",
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            flags=flags,
            groups=groups,
            max_event_time_ms=max(self.max_event_time_ms, other.max_event_time_ms),
        )


class WindowStats(msgspec.Struct, kw_only=True):
    """A window as stored and exported: rates and quantiles derived from the merged state."""

    model: str
    model_version: str
    deployment: str
    window_start_ms: EpochMs
    window_end_ms: EpochMs
    events: int
    errors: int
    timeouts: int
    refusals: int
    error_rate: float
    complaints: int
    complaint_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_mean_ms: float | None
    latency_max_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    flags: dict[str, int]
    flag_rates: dict[str, float]
    groups: dict[str, list[float]] = msgspec.field(default_factory=dict)
    bias_disparity: dict[str, float] = msgspec.field(default_factory=dict)
    bias_low: dict[str, float] = msgspec.field(default_factory=dict)
    bias_high: dict[str, float] = msgspec.field(default_factory=dict)
    latency_sketch: bytes = b""
    is_final: bool
    version: int


def add_group_counts(current: list[float] | None, more: list[float]) -> list[float]:
    """Element-wise sum of two ``GroupCounts`` vectors (see detectors/bias.py)."""
    if current is None:
        return list(more)
    return [a + b for a, b in zip(current, more, strict=True)]


def window_start(timestamp_ms: int, window_s: int) -> int:
    size = window_s * 1000
    return timestamp_ms - timestamp_ms % size


def flagged_detectors(findings: Iterable[Finding]) -> dict[str, set[str]]:
    """Request id → the detectors that flagged it."""
    flagged: dict[str, set[str]] = {}
    for finding in findings:
        if finding.flagged:
            flagged.setdefault(finding.request_id, set()).add(finding.detector)
    return flagged


def empty_partial(event: Event, start_ms: int, window_s: int) -> WindowPartial:
    return WindowPartial(
        model=event.model,
        model_version=event.model_version,
        deployment=event.deployment,
        window_start_ms=start_ms,
        window_s=window_s,
    )


def build_partials(
    events: Iterable[Event], findings: Iterable[Finding], window_s: int
) -> list[WindowPartial]:
    """One partial per (series, window) present in the batch."""
    flagged = flagged_detectors(findings)
    states: dict[tuple[str, str, str, int], tuple[WindowPartial, DDSketch]] = {}
    for event in events:
        start = window_start(event.timestamp_ms, window_s)
        key = (event.model, event.model_version, event.deployment, start)
        entry = states.get(key)
        if entry is None:
            entry = (empty_partial(event, start, window_s), DDSketch(RELATIVE_ACCURACY))
            states[key] = entry
        partial, sketch = entry
        partial.events += 1
        partial.errors += event.status == "error"
        partial.timeouts += event.status == "timeout"
        partial.refusals += event.status == "refused"
        if event.feedback is not None and event.feedback.complaint:
            partial.complaints += 1
        if event.latency_ms is not None:
            sketch.add(event.latency_ms)
            partial.latency_count += 1
            partial.latency_sum_ms += event.latency_ms
            partial.latency_max_ms = max(partial.latency_max_ms, event.latency_ms)
        partial.input_tokens += event.input_tokens or 0
        partial.output_tokens += event.output_tokens or 0
        partial.cost_usd += event.cost_usd or 0.0
        for detector in flagged.get(event.request_id, ()):
            partial.flags[detector] = partial.flags.get(detector, 0) + 1
        partial.max_event_time_ms = max(partial.max_event_time_ms, event.timestamp_ms)
    out = []
    for partial, sketch in states.values():
        if sketch.count:
            partial.latency_sketch = encode_sketch(sketch)
        out.append(partial)
    return out


def finding_partials(
    events: Iterable[Event],
    findings: Iterable[Finding],
    window_s: int,
    groups: dict[str, tuple[str, list[float]]] | None = None,
) -> list[WindowPartial]:
    """Partials carrying only flags (and bias group counts) for events another role counted.

    The ``embed`` role scores events the ``score`` role already counted, so its partials add
    flags to the same windows without adding to ``events``. ``groups`` maps request id to
    (group, counts).
    """
    flagged = flagged_detectors(findings)
    partials: dict[tuple[str, str, str, int], WindowPartial] = {}
    for event in events:
        start = window_start(event.timestamp_ms, window_s)
        key = (event.model, event.model_version, event.deployment, start)
        partial = partials.get(key)
        if partial is None:
            partial = partials[key] = empty_partial(event, start, window_s)
        for detector in flagged.get(event.request_id, ()):
            partial.flags[detector] = partial.flags.get(detector, 0) + 1
        if groups and event.request_id in groups:
            group, counts = groups[event.request_id]
            partial.groups[group] = add_group_counts(partial.groups.get(group), counts)
        partial.max_event_time_ms = max(partial.max_event_time_ms, event.timestamp_ms)
    return list(partials.values())


def finalise(
    state: WindowPartial,
    *,
    is_final: bool,
    version: int,
    bias_confidence: float = 0.95,
    bias_min_per_group: int = 5,
) -> WindowStats:
    """Derive rates and quantiles from a merged state. Error rate counts errors and timeouts."""
    sketch = decode_sketch(state.latency_sketch)
    has_latency = sketch.count > 0
    n = state.events

    def quantile(q: float) -> float | None:
        value = sketch.get_quantile_value(q) if has_latency else None
        return None if value is None else float(value)

    disparities = group_disparities(
        state.groups, confidence=bias_confidence, min_per_group=bias_min_per_group
    )
    return WindowStats(
        model=state.model,
        model_version=state.model_version,
        deployment=state.deployment,
        window_start_ms=state.window_start_ms,
        window_end_ms=state.window_start_ms + state.window_s * 1000,
        events=n,
        errors=state.errors,
        timeouts=state.timeouts,
        refusals=state.refusals,
        error_rate=(state.errors + state.timeouts) / n if n else 0.0,
        complaints=state.complaints,
        complaint_rate=state.complaints / n if n else 0.0,
        latency_p50_ms=quantile(0.50),
        latency_p95_ms=quantile(0.95),
        latency_p99_ms=quantile(0.99),
        latency_mean_ms=state.latency_sum_ms / state.latency_count if state.latency_count else None,
        latency_max_ms=state.latency_max_ms if state.latency_count else None,
        input_tokens=state.input_tokens,
        output_tokens=state.output_tokens,
        cost_usd=state.cost_usd,
        flags=dict(state.flags),
        flag_rates={name: count / n for name, count in state.flags.items()} if n else {},
        groups={g: list(v) for g, v in state.groups.items()},
        bias_disparity={d.metric: d.value for d in disparities},
        bias_low={d.metric: d.low for d in disparities},
        bias_high={d.metric: d.high for d in disparities},
        latency_sketch=state.latency_sketch,
        is_final=is_final,
        version=version,
    )
