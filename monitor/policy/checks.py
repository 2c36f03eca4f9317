"""Policy rules that benign traffic alone would fire, found from the detectors' measured
false-positive rates (the figures shipped with each detector's calibration); and a judge rule
that disagrees with the judge role's own settings.

A rate rule whose threshold sits near or below a detector's false-positive rate on ordinary
requests and answers rolls back healthy canaries: the detector's noise is the signal it
fires on. A count rule (``max_count`` flags) fires on noise once its windows hold enough
events. ``llm-monitor policy check`` prints these warnings, and the policy role logs them at
start; neither refuses the policy (an operator may know their traffic is cleaner).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from detectors.calibration import measured_false_positive_rates
from monitor.config import DetectorsSettings, JudgeSettings, Settings
from monitor.policy.config import CountRule, Policy, RateRule

MARGIN = 2.0  # a rate threshold under this many times the false-positive rate has no headroom
COUNT_FIRE_CHANCE = 0.05  # a count rule fired by noise this often at its minimum sample is noisy


def measured_rates(detectors: DetectorsSettings) -> dict[str, float]:
    """The shipped false-positive rates for these settings: injection's with or without its
    instruction model, hallucination's only for the shipped grounding and thresholds. (A
    custom toxicity or injection threshold still gets the shipped figure.)"""
    h = detectors.hallucination
    custom = (h.adapter_path, h.nli_model_path, h.grounding_threshold, h.consistency_threshold)
    return measured_false_positive_rates(
        instruction_model=detectors.injection.instruction_model,
        shipped_hallucination=all(value is None for value in custom),
    )


def policy_warnings(policy: Policy, settings: Settings) -> list[str]:
    """Everything ``policy check`` prints and the policy role logs at start: rules benign
    traffic could fire with the detectors as configured, and judge-rule disagreements."""
    return false_positive_warnings(policy, measured_rates(settings.detectors)) + judge_warnings(
        policy, settings.judge
    )


def false_positive_warnings(policy: Policy, rates: Mapping[str, float]) -> list[str]:
    """One warning per rule benign traffic could fire, naming the field and the fix."""
    warnings: list[str] = []
    rollback, kill = policy.rollback, policy.kill_switch
    for name, rule in rollback.detector_rates.items():
        instead = (f"remove it and add {name} to rollback.canary_vs_stable.rates (canary "
                   "against stable on the same traffic), ")  # fmt: skip
        warnings += _rate(f"rollback.detector_rates.{name}", rule, [name], rates, instead)
    warnings += _rate("kill_switch.safety_critical", kill.safety_critical,
                      kill.safety_detectors, rates)  # fmt: skip
    for field, count in (("rollback.safety_incidents", rollback.safety_incidents),
                         ("kill_switch.data_breach", kill.data_breach)):  # fmt: skip
        warnings += _count(field, count, policy.min_samples, rates)
    return warnings


def judge_warnings(policy: Policy, judge: JudgeSettings) -> list[str]:
    """Where ``rollback.judge_win_rate`` and an enabled judge role disagree: another gate
    threshold or minimum of pairs (the gate the judge records on each window and the policy's
    would differ), or a canary deployment the policy does not treat as one (its windows would
    be ignored)."""
    rule = policy.rollback.judge_win_rate
    if not judge.enabled:
        return []
    warnings = []
    if (rule.threshold, rule.min_pairs) != (judge.gate_threshold, judge.min_pairs):
        warnings.append(
            f"rollback.judge_win_rate (threshold {rule.threshold:g}, min_pairs "
            f"{rule.min_pairs}) differs from judge.gate_threshold {judge.gate_threshold:g} / "
            f"judge.min_pairs {judge.min_pairs}: the gate stored with each judge window and "
            "the policy's would disagree. Fix: set both to the same values."
        )
    if judge.canary_deployment not in policy.canary_deployments:
        warnings.append(
            f"judge.canary_deployment {judge.canary_deployment!r} is not in the policy's "
            f"canary_deployments {policy.canary_deployments}: the judge's windows gate and "
            "roll back nothing. Fix: add it to canary_deployments."
        )
    return warnings


def _measured(detectors: list[str], rates: Mapping[str, float]) -> float | None:
    known = [rates[d] for d in detectors if d in rates]
    return sum(known) if known else None


def _rate(
    field: str, rule: RateRule, detectors: list[str], rates: Mapping[str, float],
    instead: str = "",
) -> list[str]:  # fmt: skip
    fpr = _measured(detectors, rates)
    if not rule.enabled or fpr is None or rule.threshold >= MARGIN * fpr:
        return []
    verdict = "at or below" if rule.threshold <= fpr else "within 2x of"
    return [
        f"{field}.threshold {rule.threshold:g} is {verdict} the measured false-positive rate "
        f"of {'+'.join(detectors)} on benign traffic ({fpr:.2%}): healthy traffic alone can "
        f"fire it. Fix: raise it to at least {MARGIN * fpr:.3g}, {instead}or recalibrate the "
        "detector."
    ]


def _count(field: str, rule: CountRule, min_samples: int, rates: Mapping[str, float]) -> list[str]:
    fpr = _measured(rule.detectors, rates)
    if not rule.enabled or not fpr:
        return []
    n = rule.min_samples or min_samples
    chance = _poisson_above(rule.max_count, n * fpr)
    if chance < COUNT_FIRE_CHANCE:
        return []
    return [
        f"{field}: more than {rule.max_count} flags of {'+'.join(rule.detectors)} fire it, and "
        f"their false-positive rate on benign traffic ({fpr:.2%}) gives that in {chance:.0%} "
        f"of windows of {n} healthy events. Fix: raise {field}.max_count, or leave this to "
        f"the rate rules."
    ]


def _poisson_above(count: int, mean: float) -> float:
    """P(N > count) for N ~ Poisson(mean): how often noise alone exceeds ``count`` flags."""
    at_most = sum(math.exp(-mean) * mean**k / math.factorial(k) for k in range(count + 1))
    return max(0.0, 1.0 - at_most)
