"""A contract every registered detector must honour (river's test_estimators style)."""

from __future__ import annotations

import json

import pytest

from detectors.base import Detector, DetectorRegistry, DuplicateDetectorError
from detectors.latency_errors import LatencyErrorsDetector
from detectors.pii import PiiDetector
from monitor.config import Settings
from monitor.ingest.events import decode_event
from monitor.scoring.registry import build_registry

EVENTS = [
    decode_event(json.dumps(body).encode())
    for body in (
        {
            "request_id": "a",
            "timestamp": 1,
            "model": "m",
            "model_version": "v",
            "prompt": "my ssn is 123-45-6789",
            "response": "call 415 555 2671",
            "latency_ms": 9000,
        },
        {"request_id": "b", "timestamp": 2, "model": "m", "model_version": "v", "status": "error"},
        {"request_id": "c", "timestamp": 3, "model": "m", "model_version": "v", "prompt": "hi"},
    )  # fmt: skip
]


@pytest.fixture(params=list(build_registry(Settings())), ids=lambda d: d.name)
def detector(request: pytest.FixtureRequest) -> Detector:
    return request.param  # type: ignore[no-any-return]


def test_is_a_detector(detector: Detector) -> None:
    assert isinstance(detector, Detector)
    assert detector.name and detector.version


def test_findings_are_well_formed(detector: Detector) -> None:
    ids = {e.request_id for e in EVENTS}
    findings = detector.score(EVENTS)
    assert findings, "every detector should find something in this batch"
    for finding in findings:
        assert finding.request_id in ids
        assert finding.detector == detector.name
        assert finding.detector_version == detector.version
        assert 0.0 <= finding.score <= 1.0
        assert finding.category


def test_scoring_is_pure_and_batch_independent(detector: Detector) -> None:
    together = detector.score(EVENTS)
    alone = [f for e in EVENTS for f in detector.score([e])]
    assert together == alone == detector.score(EVENTS)


def test_empty_batch(detector: Detector) -> None:
    assert detector.score([]) == []


def test_registry_refuses_duplicate_names() -> None:
    registry = DetectorRegistry([PiiDetector()])
    with pytest.raises(DuplicateDetectorError):
        registry.register(PiiDetector())
    with pytest.raises(KeyError, match="registered: pii"):
        registry.get("toxicity")


def test_knobs_are_validated() -> None:
    with pytest.raises(ValueError, match="slow_ms"):
        LatencyErrorsDetector(slow_ms=0)


def test_disabled_detectors_are_not_registered() -> None:
    settings = Settings.model_validate({"detectors": {"pii": {"enabled": False}}})
    assert build_registry(settings).names == ("latency_errors",)
