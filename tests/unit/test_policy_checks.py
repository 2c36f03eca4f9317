"""Policy rules that the detectors' own false positives would fire are warned about."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detectors.calibration import measured_false_positive_rates
from monitor.cli import app
from monitor.config import DetectorsSettings
from monitor.policy.checks import false_positive_warnings, measured_rates
from monitor.policy.config import Policy


def policy(**overrides: object) -> Policy:
    return Policy.model_validate(overrides)


def test_a_rate_threshold_at_the_false_positive_rate_is_warned_with_the_fix() -> None:
    rules = {"toxicity": {"threshold": 0.02}, "injection": {"threshold": 0.10}}
    warnings = false_positive_warnings(
        policy(rollback={"detector_rates": rules}), {"toxicity": 0.025, "injection": 0.02}
    )
    (warning,) = [w for w in warnings if "detector_rates" in w]
    assert warning.startswith("rollback.detector_rates.toxicity.threshold 0.02 is at or below")
    assert "2.50%" in warning and "raise it to at least 0.05" in warning


def test_headroom_below_twice_the_rate_is_warned_and_above_is_not() -> None:
    rules = {"toxicity": {"threshold": 0.03}}
    near = false_positive_warnings(policy(rollback={"detector_rates": rules}), {"toxicity": 0.02})
    assert any("within 2x of" in w for w in near)
    far = false_positive_warnings(policy(rollback={"detector_rates": rules}), {"toxicity": 0.01})
    assert not any("detector_rates" in w for w in far)


def test_count_rules_fired_by_noise_are_warned_and_disabled_rules_are_not() -> None:
    strict = policy(rollback={"safety_incidents": {"max_count": 0, "detectors": ["toxicity"]}})
    noisy = false_positive_warnings(strict, {"toxicity": 0.02, "pii": 0.0})
    assert any(w.startswith("rollback.safety_incidents: more than 0 flags") for w in noisy)
    assert not any("data_breach" in w for w in noisy)  # pii has no false positives measured
    quiet = policy(rollback={"safety_incidents": {"max_count": 5, "detectors": ["toxicity"]}})
    assert not any("safety_incidents" in w
                   for w in false_positive_warnings(quiet, {"toxicity": 0.02}))  # fmt: skip
    off = policy(rollback={"detector_rates": {"toxicity": {"threshold": 0.01, "enabled": False}}})
    assert not any("detector_rates" in w for w in false_positive_warnings(off, {"toxicity": 0.05}))


def test_the_shipped_policy_is_quiet_with_the_shipped_detectors() -> None:
    from monitor.policy.config import load_policy

    shipped = load_policy(Path("deploy/policy/policy.yaml"))
    assert false_positive_warnings(shipped, measured_false_positive_rates()) == []


def test_no_measured_rate_no_warning() -> None:
    assert false_positive_warnings(policy(), {}) == []


def test_measured_rates_are_read_from_the_shipped_calibrations(tmp_path: Path) -> None:
    (tmp_path / "toxicity").mkdir()
    (tmp_path / "toxicity" / "adapter.json").write_text(
        json.dumps({"metadata": {"figures": {"benign_held_out_fpr": 0.012}}})
    )
    (tmp_path / "injection.json").write_text(
        json.dumps({"threshold": 0.6, "metadata": {"held_out_fpr_pooled": 0.018}})
    )
    assert measured_false_positive_rates(tmp_path) == {"toxicity": 0.012, "injection": 0.018}
    assert set(measured_false_positive_rates()) >= {"toxicity", "injection", "hallucination"}
    # with the instruction model, an event is flagged by its prompt or a context passage
    (tmp_path / "instructions").mkdir()
    (tmp_path / "instructions" / "adapter.json").write_text(json.dumps({"metadata": {
        "figures": {"held_out_passage_fpr": 0.01},
        "figures_by_backend": {"onnx-int8": {"held_out_passage_fpr": 0.015}},
    }}))  # fmt: skip
    assert measured_false_positive_rates(tmp_path)["injection"] == pytest.approx(0.033)


def test_an_absolute_hallucination_rule_is_warned_about_with_the_shipped_grounding(
    tmp_path: Path,
) -> None:
    """Word novelty flags about half of right answers that paraphrase their sources: a rate
    rule on it rolls back healthy canaries, so the shipped policy compares it with stable."""
    rates = measured_false_positive_rates()
    assert rates["hallucination"] > 0.2  # the measured figure, shipped beside the detector
    rule = policy(rollback={"detector_rates": {"hallucination": {"threshold": 0.10}}})
    (warning,) = false_positive_warnings(rule, rates)
    assert warning.startswith("rollback.detector_rates.hallucination.threshold 0.1 is at or below")
    assert "add hallucination to rollback.canary_vs_stable.rates" in warning
    assert "hallucination" in policy().rollback.canary_vs_stable.rates
    assert "hallucination" not in policy().rollback.detector_rates
    # another grounding model or threshold: the shipped figure does not describe it
    custom = DetectorsSettings.model_validate({"hallucination": {"grounding_threshold": 0.9}})
    assert "hallucination" not in measured_rates(custom)
    assert measured_rates(DetectorsSettings())["hallucination"] == rates["hallucination"]


def test_the_hallucination_figure_was_measured_at_the_thresholds_that_run() -> None:
    from detectors.calibration import ASSETS
    from detectors.hallucination import HallucinationDetector

    measured = json.loads((ASSETS / "hallucination.json").read_text())["metadata"]
    assert measured["thresholds"] == HallucinationDetector.THRESHOLD, (
        "re-measure: python -m detectors.training.hallucination"
    )
    assert measured["detector_version"] == HallucinationDetector.version


def test_policy_check_warns_when_the_judge_rule_and_the_judge_disagree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shipped = "deploy/policy/policy.yaml"
    runner = CliRunner()
    monkeypatch.setenv("LLM_MONITOR_JUDGE__ENABLED", "true")
    monkeypatch.setenv("LLM_MONITOR_JUDGE__GATE_THRESHOLD", "0.4")
    result = runner.invoke(app, ["policy", "check", shipped])
    assert result.exit_code == 0, result.output
    assert "judge.gate_threshold 0.4" in result.output and "Fix:" in result.output
    monkeypatch.delenv("LLM_MONITOR_JUDGE__GATE_THRESHOLD")
    result = runner.invoke(app, ["policy", "check", shipped])
    assert result.exit_code == 0 and "judge.gate_threshold" not in result.output
