"""Tumbling windows per (model, model_version, deployment): exact, replay-safe partials.

Scorers build a ``WindowPartial`` per series and window from each batch; the aggregator merges
partials into a ``WindowState`` (monitor/windows/aggregate.py). Two properties make a window
exact, whatever the batching and whatever crashes happened:

* **Every sum is an integer.** Latency is summed in microseconds, cost in nano-dollars, bias
  sentiment in 1e-4 steps (VADER's own rounding, so nothing is lost), and the latency DDSketch
  (1 % relative accuracy) holds integer bin counts, encoded canonically (zero bins trimmed).
  Merging is associative and commutative, so the stats do not depend on how events were
  batched or in which order partials merged: equal to the byte.
* **Every partial says where its events came from.** ``runs`` name the source topic partition
  and offsets of its events (``SourceRun``), and ``columns`` hold, per event, exactly what the
  event adds to the window (``EventColumns``: parallel arrays, compact in msgpack). The
  aggregator keeps per source the highest offset it merged; a replayed partial is re-summed
  from the columns of the events it has not merged yet (``WindowPartial.select``), through
  the same code that summed the partial when it was built (``column_sums``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeVar

import msgspec
from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchMessage
from ddsketch.pb.ddsketch_pb2 import Store as StoreMessage
from ddsketch.pb.proto import DDSketchProto
from google.protobuf.message import DecodeError

from detectors.base import Finding
from detectors.bias import group_disparities
from monitor.ingest.events import Event
from monitor.storage.columns import EpochMs

RELATIVE_ACCURACY: Final = 0.01
# Event kinds: the status code, plus COMPLAINT when the user complained.
STATUS_CODES: Final = {"ok": 0, "error": 1, "timeout": 2, "refused": 3}
OTHER_STATUS: Final = 4
COMPLAINT: Final = 8
NO_LATENCY: Final = -1
NO_GROUP: Final = -1
# Fixed-point scale of each element of a bias group's counts (see detectors/bias.py: n,
# refusals, sentiment sum, sentiment squared, toxicity scored, toxic).
GROUP_SCALE: Final = (1, 1, 10_000, 100_000_000, 1, 1)

Number = TypeVar("Number", int, float)


class PartialError(ValueError):
    """A partial that cannot be merged: inconsistent columns, a corrupt sketch."""


def encode_sketch(sketch: DDSketch) -> bytes:
    """Canonical bytes: equal bins give equal bytes whatever the store's growth history."""
    proto = DDSketchProto.to_proto(sketch)  # type: ignore[no-untyped-call]
    _trim(proto.positiveValues)
    _trim(proto.negativeValues)
    return bytes(proto.SerializeToString())


def _trim(store: StoreMessage) -> None:
    """Drop the zero bins at both ends (the dense store's padding), moving the offset along."""
    counts = list(store.contiguousBinCounts)
    first = next((i for i, count in enumerate(counts) if count), len(counts))
    end = len(counts) - next((i for i, count in enumerate(reversed(counts)) if count), 0)
    del store.contiguousBinCounts[:]
    store.contiguousBinCounts.extend(counts[first:end])
    store.contiguousBinIndexOffset = store.contiguousBinIndexOffset + first if first < end else 0


def decode_sketch(data: bytes) -> DDSketch:
    if not data:
        return DDSketch(RELATIVE_ACCURACY)
    message = DDSketchMessage()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise PartialError(f"corrupt latency sketch: {exc}") from exc
    sketch: DDSketch = DDSketchProto.from_proto(message)  # type: ignore[no-untyped-call]
    return sketch


class EventSource(NamedTuple):
    """Where one event was read: the topic partition and offset of its record."""

    topic: str
    partition: int
    offset: int


class SourceRun(msgspec.Struct, array_like=True, frozen=True):
    """``count`` consecutive events of a partial's columns, read from one topic partition in
    strictly increasing offsets from ``first`` to ``last``."""

    topic: str
    partition: int
    first: int
    last: int
    count: int


class EventColumns(msgspec.Struct, array_like=True):
    """What each event adds to its window, as parallel arrays in run order.

    Counted partials (the score role's) fill ``kinds`` to ``cost_nusd``; flags-only partials
    (the embed role's) leave them empty and may fill ``groups``.
    """

    gaps: list[int] = msgspec.field(default_factory=list)  # offset minus the previous (0 first)
    kinds: bytes = b""  # status code, + COMPLAINT
    latency_us: list[int] = msgspec.field(default_factory=list)  # NO_LATENCY when absent
    input_tokens: list[int] = msgspec.field(default_factory=list)
    output_tokens: list[int] = msgspec.field(default_factory=list)
    cost_nusd: list[int] = msgspec.field(default_factory=list)
    flags: list[int] = msgspec.field(default_factory=list)  # bit i: detectors[i] flagged it
    groups: list[int] = msgspec.field(default_factory=list)  # group_names index, or NO_GROUP
    group_counts: list[list[int]] = msgspec.field(default_factory=list)  # one per grouped event
    # bit i: detectors[i] scored it (sampled in); empty: no scored counts (every event scored)
    scored: list[int] = msgspec.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.flags)

    def select(self, keep: Sequence[int]) -> EventColumns:
        """The columns of the events at ``keep`` (gaps are not carried: sums do not use them)."""
        counts = iter(self.group_counts)
        grouped = {i: next(counts) for i, g in enumerate(self.groups) if g != NO_GROUP}
        return EventColumns(
            kinds=bytes(self.kinds[i] for i in keep) if self.kinds else b"",
            latency_us=[self.latency_us[i] for i in keep] if self.kinds else [],
            input_tokens=[self.input_tokens[i] for i in keep] if self.kinds else [],
            output_tokens=[self.output_tokens[i] for i in keep] if self.kinds else [],
            cost_nusd=[self.cost_nusd[i] for i in keep] if self.kinds else [],
            flags=[self.flags[i] for i in keep],
            groups=[self.groups[i] for i in keep] if self.groups else [],
            group_counts=[grouped[i] for i in keep if i in grouped],
            scored=[self.scored[i] for i in keep] if self.scored else [],
        )


class WindowCounts(msgspec.Struct, kw_only=True):
    """The exact, mergeable sums of one series in one window."""

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
    latency_sum_us: int = 0
    latency_max_us: int = 0
    latency_sketch: bytes = b""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nusd: int = 0
    flags: dict[str, int] = msgspec.field(default_factory=dict)
    # Events each sampled detector scored; a detector absent here scored every event.
    scored: dict[str, int] = msgspec.field(default_factory=dict)
    groups: dict[str, list[int]] = msgspec.field(default_factory=dict)
    max_event_time_ms: int = 0

    @property
    def key(self) -> str:
        """Table key: series and window start; also the Kafka key used to route partials."""
        return f"{self.model}|{self.model_version}|{self.deployment}|{self.window_start_ms}"

    @property
    def series(self) -> tuple[str, str, str]:
        return (self.model, self.model_version, self.deployment)

    @property
    def end_ms(self) -> int:
        return self.window_start_ms + self.window_s * 1000

    def absorb(self, other: WindowCounts) -> None:
        """Add ``other``'s sums to these, in place; the sketches merge exactly."""
        if other.latency_sketch and not self.latency_sketch:
            self.latency_sketch = other.latency_sketch  # already canonical
        elif other.latency_sketch:
            sketch = decode_sketch(self.latency_sketch)
            sketch.merge(decode_sketch(other.latency_sketch))
            self.latency_sketch = encode_sketch(sketch)
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency_max_us = max(self.latency_max_us, other.latency_max_us)
        self.max_event_time_ms = max(self.max_event_time_ms, other.max_event_time_ms)
        for detector, count in other.flags.items():
            self.flags[detector] = self.flags.get(detector, 0) + count
        for detector, count in other.scored.items():
            self.scored[detector] = self.scored.get(detector, 0) + count
        for group, counts in other.groups.items():
            self.groups[group] = add_group_counts(self.groups.get(group), counts)


_SUMMED: Final = (
    "events", "errors", "timeouts", "refusals", "complaints", "latency_count",
    "latency_sum_us", "input_tokens", "output_tokens", "cost_nusd",
)  # fmt: skip


class WindowPartial(WindowCounts, kw_only=True):
    """The sums of some of a window's events, where they came from, and what each one added.

    ``stream`` names the contributing role ("score" counts events, "embed" adds flags), since
    both contribute different sums for the same events. A partial without ``runs`` has no
    source and is always merged whole.
    """

    stream: str = ""
    runs: list[SourceRun] = msgspec.field(default_factory=list)
    detectors: list[str] = msgspec.field(default_factory=list)
    group_names: list[str] = msgspec.field(default_factory=list)
    columns: EventColumns = msgspec.field(default_factory=EventColumns)

    def check(self) -> None:
        """Raise ``PartialError`` unless runs and columns agree (before any is trusted)."""
        if not self.runs:
            return  # merged whole, from its sums: the columns are not read
        c = self.columns
        n = len(c)
        lengths = {len(c.gaps), len(c.groups) or n, len(c.scored) or n} | (
            {len(c.kinds), len(c.latency_us), len(c.input_tokens), len(c.output_tokens),
             len(c.cost_nusd)} if c.kinds else set()
        )  # fmt: skip
        if lengths != {n} or sum(r.count for r in self.runs) != n:
            raise PartialError(f"{self.key}: runs and columns disagree")
        if any(r.count < 1 or r.first > r.last for r in self.runs):
            raise PartialError(f"{self.key}: empty or decreasing run")
        if c.flags and not 0 <= min(c.flags) <= max(c.flags) < 1 << len(self.detectors):
            raise PartialError(f"{self.key}: flag bits name unknown detectors")
        if c.scored and not 0 <= min(c.scored) <= max(c.scored) < 1 << len(self.detectors):
            raise PartialError(f"{self.key}: scored bits name unknown detectors")
        grouped = [g for g in c.groups if g != NO_GROUP]
        if grouped and not 0 <= min(grouped) <= max(grouped) < len(self.group_names):
            raise PartialError(f"{self.key}: group indices name unknown groups")
        if len(grouped) != len(c.group_counts) or any(
            len(counts) != len(GROUP_SCALE) for counts in c.group_counts
        ):
            raise PartialError(f"{self.key}: group columns disagree")

    def offsets(self) -> Iterable[tuple[SourceRun, int, int]]:
        """(run, column index, source offset) of every event, in column order."""
        index = 0
        for run in self.runs:
            offset = run.first
            for gap in self.columns.gaps[index : index + run.count]:
                offset += gap
                yield run, index, offset
                index += 1

    def select(self, keep: Sequence[int]) -> WindowCounts:
        """The sums of the events at column indices ``keep``, re-summed from their columns."""
        return column_sums(self._counts(), self.columns.select(keep), self)

    def _counts(self) -> WindowCounts:
        return WindowCounts(
            model=self.model,
            model_version=self.model_version,
            deployment=self.deployment,
            window_start_ms=self.window_start_ms,
            window_s=self.window_s,
            max_event_time_ms=self.max_event_time_ms,
        )


class WindowState(WindowCounts, kw_only=True):
    """A window as the aggregator keeps it: its sums, and per source the highest offset merged
    (``hwm``, keyed by ``source_key``), in the same table value so both restore together."""

    hwm: dict[str, int] = msgspec.field(default_factory=dict)


def source_key(stream: str, run: SourceRun) -> str:
    return f"{stream}|{run.topic}|{run.partition}"


def column_sums(out: WindowCounts, columns: EventColumns, names: WindowPartial) -> WindowCounts:
    """Sum ``columns`` into ``out`` (flag bits and group indices name ``names``' detectors and
    groups). The one place event values become window sums, for new and replayed partials."""
    kinds = columns.kinds
    if kinds:
        out.events = len(kinds)
        out.errors = kinds.count(1) + kinds.count(1 | COMPLAINT)
        out.timeouts = kinds.count(2) + kinds.count(2 | COMPLAINT)
        out.refusals = kinds.count(3) + kinds.count(3 | COMPLAINT)
        out.complaints = len(kinds) - sum(kinds.count(kind) for kind in range(COMPLAINT))
        latencies = [us for us in columns.latency_us if us != NO_LATENCY]
        if latencies:
            sketch = DDSketch(RELATIVE_ACCURACY)
            for us in latencies:
                sketch.add(us / 1000)
            out.latency_sketch = encode_sketch(sketch)
            out.latency_count = len(latencies)
            out.latency_sum_us = sum(latencies)
            out.latency_max_us = max(latencies)
        out.input_tokens = sum(columns.input_tokens)
        out.output_tokens = sum(columns.output_tokens)
        out.cost_nusd = sum(columns.cost_nusd)
    _count_bits(out.flags, columns.flags, names.detectors)
    _count_bits(out.scored, columns.scored, names.detectors)
    counts = iter(columns.group_counts)
    for group in columns.groups:
        if group != NO_GROUP:
            name = names.group_names[group]
            out.groups[name] = add_group_counts(out.groups.get(name), next(counts))
    return out


def _count_bits(out: dict[str, int], masks: list[int], detectors: list[str]) -> None:
    """Add one to ``out[detectors[i]]`` for every set bit i of every mask."""
    for mask in filter(None, masks):
        bit = 0
        while mask:
            if mask & 1:
                detector = detectors[bit]
                out[detector] = out.get(detector, 0) + 1
            mask >>= 1
            bit += 1


def add_group_counts(current: list[Number] | None, more: list[Number]) -> list[Number]:
    """Element-wise sum of two ``GroupCounts`` vectors (see detectors/bias.py)."""
    if current is None:
        return list(more)
    return [a + b for a, b in zip(current, more, strict=True)]


def exact_group_counts(counts: Sequence[float]) -> list[int]:
    """One response's group counts in fixed point (``GROUP_SCALE``), so they sum exactly."""
    return [round(value * scale) for value, scale in zip(counts, GROUP_SCALE, strict=True)]


def group_values(counts: Sequence[int]) -> list[float]:
    """Summed fixed-point group counts back in the units of detectors/bias.py."""
    return [value / scale for value, scale in zip(counts, GROUP_SCALE, strict=True)]


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


def flag_masks(
    findings: Iterable[Finding], also: Iterable[str] = ()
) -> tuple[list[str], dict[str, int]]:
    """The flagging detectors and ``also`` (sorted) and, per request id, the bitmask of those
    that flagged it."""
    flagged = flagged_detectors(findings)
    detectors = sorted({d for names in flagged.values() for d in names} | set(also))
    bits = {d: 1 << i for i, d in enumerate(detectors)}
    return detectors, {rid: sum(bits[d] for d in names) for rid, names in flagged.items()}


def scored_masks(detectors: list[str], scored: Mapping[str, AbstractSet[str]]) -> dict[str, int]:
    """Per request id, the bitmask (bits of ``detectors``) of the detectors that scored it."""
    masks: dict[str, int] = {}
    for i, detector in enumerate(detectors):
        for request_id in scored.get(detector, ()):
            masks[request_id] = masks.get(request_id, 0) | 1 << i
    return masks


def empty_partial(event: Event, start_ms: int, window_s: int) -> WindowPartial:
    return WindowPartial(
        model=event.model,
        model_version=event.model_version,
        deployment=event.deployment,
        window_start_ms=start_ms,
        window_s=window_s,
    )


@dataclass
class _Run:
    """Events of one partial from one source partition, in strictly increasing offsets."""

    source: EventSource | None
    first: int = -1
    last: int = -1
    columns: EventColumns = field(default_factory=EventColumns)
    kinds: bytearray = field(default_factory=bytearray)

    def accepts(self, offset: int) -> bool:
        return self.source is None or offset > self.last

    def add(self, offset: int, mask: int) -> EventColumns:
        """Start the event's row: its offset gap and flags; the caller adds the other values."""
        columns = self.columns
        if columns.gaps:
            columns.gaps.append(offset - self.last)
        else:
            columns.gaps.append(0)
            self.first = offset
        self.last = offset
        columns.flags.append(mask)
        return columns

    def add_counted(self, offset: int, mask: int, event: Event) -> None:
        """The event's row in a counted partial. The event contract bounds every value
        (monitor/ingest/events.py), so a window's sums stay far within 64 bits."""
        columns = self.add(offset, mask)
        kind = STATUS_CODES.get(event.status, OTHER_STATUS)
        feedback = event.feedback
        self.kinds.append(kind + COMPLAINT if feedback is not None and feedback.complaint else kind)
        latency, cost = event.latency_ms, event.cost_usd
        columns.latency_us.append(NO_LATENCY if latency is None else round(latency * 1000))
        columns.input_tokens.append(event.input_tokens or 0)
        columns.output_tokens.append(event.output_tokens or 0)
        columns.cost_nusd.append(round(cost * 1e9) if cost else 0)

    def source_run(self) -> SourceRun | None:
        if self.source is None:
            return None
        topic, partition = self.source.topic, self.source.partition
        return SourceRun(topic, partition, self.first, self.last, len(self.columns.gaps))


@dataclass
class _Builder:
    """Collects one partial: its runs per source, then its columns (run after run) and sums."""

    partial: WindowPartial
    runs: dict[tuple[str, int] | None, list[_Run]] = field(default_factory=dict)  # by source
    group_index: dict[str, int] = field(default_factory=dict)

    def run(self, source: EventSource | None) -> tuple[_Run, int]:
        """The run an event read at ``source`` joins (a new one where offsets stop increasing),
        and its offset."""
        key, offset = (None, -1) if source is None else (source[:2], source.offset)
        runs = self.runs.get(key)
        if runs is None:
            runs = self.runs[key] = []
        if not runs or not runs[-1].accepts(offset):
            runs.append(_Run(source))
        return runs[-1], offset

    def group(self, name: str) -> int:
        index = self.group_index.get(name)
        if index is None:
            index = self.group_index[name] = len(self.group_index)
            self.partial.group_names.append(name)
        return index

    def finish(self) -> WindowPartial:
        partial, columns = self.partial, self.partial.columns
        kinds = bytearray()
        for runs in self.runs.values():
            for run in runs:
                part = run.columns
                for name in _COLUMNS:
                    getattr(columns, name).extend(getattr(part, name))
                kinds += run.kinds
                source_run = run.source_run()
                if source_run is not None:
                    partial.runs.append(source_run)
        columns.kinds = bytes(kinds)
        column_sums(partial, columns, partial)
        if None in self.runs:  # no source to deduplicate by: the columns would be dead weight
            partial.columns = EventColumns()
        return partial


_COLUMNS: Final = (
    "gaps", "latency_us", "input_tokens", "output_tokens", "cost_nusd", "flags", "groups",
    "group_counts", "scored",
)  # fmt: skip


class _Batch:
    """The partials of one batch, one builder per (series, window)."""

    def __init__(self, window_s: int, stream: str, detectors: list[str]) -> None:
        self.window_s = window_s
        self.stream = stream
        self.detectors = detectors
        self.builders: dict[tuple[str, str, str, int], _Builder] = {}

    def run(self, event: Event, source: EventSource | None) -> tuple[_Builder, _Run, int]:
        """The event's partial builder, the run it joins there, and its source offset."""
        timestamp_ms = event.timestamp_ms
        start = window_start(timestamp_ms, self.window_s)
        key = (event.model, event.model_version, event.deployment, start)
        builder = self.builders.get(key)
        if builder is None:
            partial = empty_partial(event, start, self.window_s)
            partial.stream = self.stream
            partial.detectors = self.detectors
            builder = self.builders[key] = _Builder(partial)
        if timestamp_ms > builder.partial.max_event_time_ms:
            builder.partial.max_event_time_ms = timestamp_ms
        run, offset = builder.run(source)
        return builder, run, offset

    def finish(self) -> list[WindowPartial]:
        return [builder.finish() for builder in self.builders.values()]


def _sourced(
    events: Sequence[Event], sources: Sequence[EventSource] | None
) -> Iterable[tuple[Event, EventSource | None]]:
    if sources is None:
        return ((event, None) for event in events)
    if len(sources) != len(events):
        raise ValueError(f"{len(sources)} sources for {len(events)} events")
    return zip(events, sources, strict=True)


def build_partials(
    events: Sequence[Event],
    findings: Iterable[Finding],
    window_s: int,
    sources: Sequence[EventSource] | None = None,
) -> list[WindowPartial]:
    """The score role's partials: one per (series, window) present in the batch, counting its
    events and their flags. ``sources[i]`` is where ``events[i]`` was read."""
    detectors, masks = flag_masks(findings)
    batch = _Batch(window_s, "score", detectors)
    for event, source in _sourced(events, sources):
        _, run, offset = batch.run(event, source)
        run.add_counted(offset, masks.get(event.request_id, 0), event)
    return batch.finish()


def finding_partials(
    events: Sequence[Event],
    findings: Iterable[Finding],
    window_s: int,
    groups: dict[str, tuple[str, list[float]]] | None = None,
    sources: Sequence[EventSource] | None = None,
    scored: Mapping[str, AbstractSet[str]] | None = None,
) -> list[WindowPartial]:
    """Partials carrying only flags (and bias group counts) for events another role counted.

    The ``embed`` role scores events the ``score`` role already counted, so its partials add
    flags to the same windows without adding to ``events``. ``groups`` maps request id to
    (group, counts); ``sources[i]`` is where ``events[i]`` was read. ``scored`` maps each
    sampled detector to the request ids it scored: the windows count them (``scored``), so a
    rate's denominator is the events scored, not the events seen.
    """
    detectors, masks = flag_masks(findings, scored or ())
    scored_by = scored_masks(detectors, scored) if scored is not None else None
    batch = _Batch(window_s, "embed", detectors)
    for event, source in _sourced(events, sources):
        builder, run, offset = batch.run(event, source)
        columns = run.add(offset, masks.get(event.request_id, 0))
        if scored_by is not None:
            columns.scored.append(scored_by.get(event.request_id, 0))
        if groups:
            grouped = groups.get(event.request_id)
            columns.groups.append(NO_GROUP if grouped is None else builder.group(grouped[0]))
            if grouped is not None:
                columns.group_counts.append(exact_group_counts(grouped[1]))
    return batch.finish()


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
    flag_rates: dict[str, float]  # flags / events the detector scored
    groups: dict[str, list[float]] = msgspec.field(default_factory=dict)
    bias_disparity: dict[str, float] = msgspec.field(default_factory=dict)
    bias_low: dict[str, float] = msgspec.field(default_factory=dict)
    bias_high: dict[str, float] = msgspec.field(default_factory=dict)
    latency_sketch: bytes = b""
    is_final: bool
    version: int
    # Sampled detectors only (a detector absent scored every event; rows before m0008 have
    # neither): events scored, and the fraction of the window's events that is.
    scored: dict[str, int] = msgspec.field(default_factory=dict)
    sample_rates: dict[str, float] = msgspec.field(default_factory=dict)

    def scored_count(self, detector: str) -> int:
        """Events ``detector`` scored in this window: the denominator of its rate."""
        return scored_count(self.scored, detector, self.events)


def scored_count(scored: Mapping[str, int], detector: str, events: int) -> int:
    """Events ``detector`` scored, given a window's (or a merge's) scored counts and events: a
    detector that is not sampled scores every event."""
    return scored.get(detector, events)


def finalise(
    state: WindowCounts,
    *,
    is_final: bool,
    version: int,
    bias_confidence: float = 0.95,
    bias_min_per_group: int = 5,
) -> WindowStats:
    """Derive rates and quantiles from a merged state (maps sorted by name, so equal states give
    equal bytes). Error rate counts errors and timeouts."""
    sketch = decode_sketch(state.latency_sketch)
    has_latency = sketch.count > 0
    n = state.events

    def quantile(q: float) -> float | None:
        value = sketch.get_quantile_value(q) if has_latency else None
        return None if value is None else float(value)

    flags = dict(sorted(state.flags.items()))
    scored = dict(sorted(state.scored.items()))
    rated = sorted(flags.keys() | scored.keys())
    denominators = {name: scored_count(scored, name, n) for name in rated}
    groups = {g: group_values(state.groups[g]) for g in sorted(state.groups)}
    disparities = group_disparities(
        groups, confidence=bias_confidence, min_per_group=bias_min_per_group
    )
    count = state.latency_count
    return WindowStats(
        model=state.model,
        model_version=state.model_version,
        deployment=state.deployment,
        window_start_ms=state.window_start_ms,
        window_end_ms=state.end_ms,
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
        latency_mean_ms=state.latency_sum_us / count / 1000 if count else None,
        latency_max_ms=state.latency_max_us / 1000 if count else None,
        input_tokens=state.input_tokens,
        output_tokens=state.output_tokens,
        cost_usd=state.cost_nusd / 1e9,
        flags=flags,
        flag_rates={
            name: min(1.0, flags.get(name, 0) / denominators[name])
            for name in rated
            if denominators[name]
        },
        groups=groups,
        bias_disparity={d.metric: d.value for d in disparities},
        bias_low={d.metric: d.low for d in disparities},
        bias_high={d.metric: d.high for d in disparities},
        latency_sketch=state.latency_sketch,
        is_final=is_final,
        version=version,
        scored=scored,
        sample_rates={name: min(1.0, count / n) for name, count in scored.items()} if n else {},
    )
