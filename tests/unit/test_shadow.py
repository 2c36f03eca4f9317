"""Shadow mode: candidate detector configurations score live traffic; their findings are
labelled with their own version and kept out of everything the policy reads (the live
findings, window partials, the live detector metrics)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from detectors.base import DetectorRegistry, Finding
from detectors.latency_errors import LatencyErrorsDetector
from monitor.config import DetectorsSettings, ShadowDetector, load_settings
from monitor.errors import ConfigError
from monitor.ingest.decode import RawMessage
from monitor.ingest.events import Event
from monitor.metrics import create_metrics
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.registry import build_cheap_shadows
from monitor.scoring.rows import ScoredBatch
from monitor.scoring.sampling import BacklogController, Sampler
from monitor.scoring.shadow import Shadow, run_shadows
from monitor.windows.aggregate import WindowAggregator
from streams.observe import expose_shadows, observe_scoring
from streams.score import scored_records
from tests.conftest import decoded_event

T0 = 1_795_514_400_000
ENV = "LLM_MONITOR_DETECTORS__SHADOW"
FAST = "1.0.0-fast"
LATENCIES = [6000.0, 2000.0, 500.0, 7000.0, 1500.0, 800.0]  # live flags > 5 s, shadow > 1 s


def shadows_env(monkeypatch: pytest.MonkeyPatch, *shadows: dict[str, object]) -> None:
    monkeypatch.setenv(ENV, json.dumps(list(shadows)))


def messages(latencies: Sequence[float]) -> list[RawMessage]:
    out = []
    for i, latency in enumerate(latencies):
        body = {"request_id": f"r{i}", "timestamp": T0 + i, "model": "m", "model_version": "v",
                "deployment": "canary", "prompt": "hi", "response": "ok", "latency_ms": latency}  # fmt: skip
        out.append(RawMessage(json.dumps(body).encode(), None, "llm.events", 0, i, T0))
    return out


def fast_latency_shadow() -> Pipeline:
    """Live latency_errors at 5 s; its shadow at 1 s, stored as FAST."""
    cfg = DetectorsSettings.model_validate(
        {"shadow": [{"detector": "latency_errors", "version": FAST, "settings": {"slow_ms": 1000}}]}
    )
    live = LatencyErrorsDetector()
    return Pipeline(DetectorRegistry([live]), shadows=build_cheap_shadows(cfg, [live]))


# -- configuration ---------------------------------------------------------------------------


def test_a_shadow_is_configured_as_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    shadows_env(monkeypatch, {"detector": "toxicity", "version": "t0.3",
                              "settings": {"threshold": 0.3, "sample_rate": 0.5}})  # fmt: skip
    cfg = load_settings().detectors
    assert cfg.shadow == [
        ShadowDetector(detector="toxicity", version="t0.3",
                       settings={"threshold": 0.3, "sample_rate": 0.5}),
    ]  # fmt: skip
    assert cfg.semantic_enabled  # the embed role runs for the shadow alone
    assert not cfg.toxicity.enabled  # the live one stays off


def test_a_shadow_is_configured_in_the_yaml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(
        "detectors:\n  latency_errors: {slow_ms: 4000}\n  shadow:\n"
        "    - detector: latency_errors\n      settings: {slow_ms: 1000}\n"
    )
    monkeypatch.setenv("LLM_MONITOR_CONFIG_FILE", str(path))
    (shadow,) = load_settings().detectors.shadow
    assert shadow == ShadowDetector(detector="latency_errors", settings={"slow_ms": 1000})
    assert not load_settings().detectors.semantic_enabled


@pytest.mark.parametrize(
    ("shadows", "names"),
    [
        ([{"detector": "toxicity", "settings": {"threshold": 3}}],
         ["detectors.shadow.0", "settings.threshold", "less than or equal to 1", "(got 3)"]),
        ([{"detector": "toxicity", "settings": {"thresh": 0.3}}],
         ["detectors.shadow.0", "toxicity has no ['thresh']", "threshold"]),
        ([{"detector": "pii", "settings": {"enabled": False}}],
         ["settings.enabled: a shadow always runs"]),
        ([{"detector": "drift"}], ["detectors.shadow.0.detector", "'pii'", "(got 'drift')"]),
        ([{"detector": "pii", "version": "a b"}], ["detectors.shadow.0.version", "'a b'"]),
        ([{"detector": "pii", "thresold": 1}], ["detectors.shadow.0.thresold", "Extra inputs"]),
        ([{"detector": "pii"}, {"detector": "pii"}],
         ["two shadows of pii", "<version>-shadow", "a version of its own"]),
        ([{"detector": "pii", "version": "x"}, {"detector": "pii", "version": "x"}],
         ["two shadows of pii", "'x'"]),
    ],
)  # fmt: skip
def test_a_bad_shadow_names_the_field_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, shadows: list[dict[str, object]], names: list[str]
) -> None:
    shadows_env(monkeypatch, *shadows)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    for name in names:
        assert name in message
    assert ENV in message and "Fix:" in message


def test_the_candidate_is_the_live_configuration_plus_the_shadows_settings() -> None:
    cfg = DetectorsSettings.model_validate({
        "toxicity": {"enabled": True, "sample_rate": 0.5, "threshold": 0.6},
        "bias": {"enabled": True},
        "shadow": [{"detector": "toxicity", "settings": {"threshold": 0.3}}],
    })  # fmt: skip
    candidate = cfg.candidate(cfg.shadow[0])
    assert candidate.toxicity.enabled and candidate.toxicity.threshold == 0.3
    assert candidate.toxicity.sample_rate == 0.5  # the rest as live
    assert not any(
        getattr(candidate, n).enabled
        for n in ("pii", "latency_errors", "hallucination", "injection", "bias", "drift")
    )
    assert candidate.shadow == []
    assert cfg.toxicity.threshold == 0.6  # the live settings are untouched


def test_a_shadow_is_labelled_apart_from_the_live_version() -> None:
    live = LatencyErrorsDetector()
    cfg = DetectorsSettings.model_validate({"shadow": [{"detector": "latency_errors"}]})
    (shadow,) = build_cheap_shadows(cfg, [live])
    assert shadow.version == "1.0.0-shadow"
    assert isinstance(shadow.detector, LatencyErrorsDetector)
    assert shadow.detector is not live

    same = DetectorsSettings.model_validate(
        {"shadow": [{"detector": "latency_errors", "version": live.version}]}
    )
    with pytest.raises(ConfigError, match=r"detectors\.shadow\.0\.version: '1\.0\.0' is the live"):
        build_cheap_shadows(same, [live])


# -- routing ---------------------------------------------------------------------------------


def test_shadow_findings_never_reach_the_live_findings_or_the_windows() -> None:
    result = fast_latency_shadow().process(messages(LATENCIES))
    live = [(r.finding.request_id, r.finding.detector_version) for r in result.scored.findings]
    assert live == [("r0", "1.0.0"), ("r3", "1.0.0")]
    shadow = [(r.finding.request_id, r.finding.detector_version) for r in result.scored.shadow]
    assert shadow == [("r0", FAST), ("r1", FAST), ("r3", FAST), ("r4", FAST)]
    assert {r.deployment for r in result.scored.shadow} == {"canary"}  # the event's series

    # The policy reads windows, and windows are built from the partials alone.
    (partial,) = result.partials
    assert partial.flags == {"latency_errors": 2}
    aggregator = WindowAggregator({}, allowed_lateness_s=0)
    aggregator.add(partial)
    stats = aggregator.snapshot(partial.key)
    assert stats is not None and stats.flag_rates == {"latency_errors": 2 / 6}


def test_a_shadow_of_a_detector_not_enabled_live_adds_no_flag_to_the_windows() -> None:
    cfg = DetectorsSettings.model_validate({"shadow": [{"detector": "pii"}]})
    live = LatencyErrorsDetector()
    pipeline = Pipeline(DetectorRegistry([live]), shadows=build_cheap_shadows(cfg, [live]))
    raw = messages([10.0])[0]
    body = json.loads(raw.value) | {"response": "mail eve@example.com"}
    result = pipeline.process([msgspec.structs.replace(raw, value=json.dumps(body).encode())])
    assert [r.finding.detector for r in result.scored.shadow] == ["pii"]
    assert result.scored.findings == []
    assert result.partials[0].flags == {}
    assert result.scored.events[0].response == "mail <EMAIL>"  # redacted as ever


class Broken:
    name = "latency_errors"
    version = "9.9.9"

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        raise RuntimeError("candidate bug")


def test_a_failing_shadow_costs_only_its_own_findings() -> None:
    live = LatencyErrorsDetector()
    pipeline = Pipeline(DetectorRegistry([live]), shadows=[Shadow(Broken(), "broken")])
    result = pipeline.process(messages(LATENCIES))
    assert len(result.scored.findings) == 2 and result.scored.shadow == []
    assert result.shadow.failed == [("latency_errors", "broken")]


def test_a_shadow_samples_like_a_live_detector_at_its_rate() -> None:
    events = [decoded_event(f"r{i}", timestamp=T0 + i, latency_ms=9000.0) for i in range(400)]
    half = Shadow(LatencyErrorsDetector(), "half", sample_rate=0.5)
    sampler = Sampler({"latency_errors": 0.5})
    found = run_shadows([half], events, sampler).findings
    assert 100 < len(found) < 300
    picked = sampler.select("latency_errors", events)  # what the live detector would score
    assert {f.request_id for f in found} == {e.request_id for e in picked}
    assert {f.details["sample_rate"] for f in found} == {"0.5"}
    # Behind on the backlog, the shadow's rate scales down with the live ones.
    slow = Sampler({}, BacklogController(1.0, min_rate=0.05, adjust_interval_s=0))
    slow.observe_lag(5.0)
    assert slow.scaled(0.5) == 0.25 and slow.scaled(1.0) == 0.5


def test_scored_records_split_keeps_each_events_shadow_findings_with_it() -> None:
    batch = fast_latency_shadow().process(messages(LATENCIES)).scored
    records = scored_records(batch, record_limit=len(msgspec.msgpack.encode(batch)) // 3)
    parts = [msgspec.msgpack.decode(r, type=ScoredBatch) for r in records]
    assert len(parts) > 1
    for part in parts:
        ids = {e.request_id for e in part.events}
        assert {r.finding.request_id for r in part.shadow} <= ids
    assert sum(len(p.shadow) for p in parts) == len(batch.shadow)


def test_a_record_from_before_shadows_decodes_with_none() -> None:
    old = msgspec.msgpack.encode({"events": [], "findings": []})
    assert msgspec.msgpack.decode(old, type=ScoredBatch).shadow == []


# -- metrics ---------------------------------------------------------------------------------


def test_shadow_findings_are_counted_apart_from_the_live_detector_metrics() -> None:
    metrics = create_metrics(CollectorRegistry())
    pipeline = fast_latency_shadow()
    expose_shadows(metrics, pipeline.shadows)
    observe_scoring(metrics, 6, pipeline.process(messages(LATENCIES)))

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    shadow = {"detector": "latency_errors", "detector_version": FAST}
    assert value("llm_monitor_shadow_findings_total", **shadow, flagged="true") == 4
    assert value("llm_monitor_shadow_findings_total", **shadow, flagged="false") == 0
    assert value("llm_monitor_shadow_failures_total", **shadow) == 0
    assert value("llm_monitor_shadow_duration_seconds_count", **shadow) == 1
    live = {"model": "m", "model_version": "v", "deployment": "canary",
            "detector": "latency_errors", "category": "slow"}  # fmt: skip
    assert value("llm_monitor_detector_flags_total", **live) == 2  # the live verdicts only
