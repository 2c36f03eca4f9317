"""The policy file: rollout stages, rollback triggers, kill-switch conditions, webhooks.

A YAML file (``policy.file`` in settings, or ``llm-monitor policy check FILE``) validated with
pydantic; an error names the field's path, what is wrong and how to fix it. Every threshold
has the default the SRE would pick first; the file only needs what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monitor.errors import ConfigError

Action = Literal["rollback", "kill"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateRule(_Strict):
    """Fires when the confidence bound of a rate clears ``threshold``."""

    threshold: float = Field(ge=0, le=1)
    min_samples: int | None = Field(default=None, ge=1, description="default: policy's")
    enabled: bool = True


class CountRule(_Strict):
    """Fires when more than ``max_count`` matching flags are seen (with enough samples)."""

    max_count: int = Field(default=0, ge=0)
    detectors: list[str] = Field(min_length=1)
    min_samples: int | None = Field(default=None, ge=1)
    enabled: bool = True


class LatencyRule(_Strict):
    """Fires when the lower confidence bound of the latency quantile exceeds ``threshold_ms``."""

    quantile: float = Field(default=0.99, gt=0, lt=1)
    threshold_ms: float = Field(gt=0)
    min_samples: int | None = Field(default=None, ge=1)
    enabled: bool = True


class ComparisonRule(_Strict):
    """Canary minus stable, per rate: fires when the difference's lower bound > ``margin``."""

    margin: float = Field(default=0.02, ge=0, le=1)
    rates: list[str] = Field(
        default_factory=lambda: ["error_rate", "toxicity", "pii", "hallucination"]
    )
    min_samples: int | None = Field(default=None, ge=1)
    enabled: bool = True


class JudgeRule(_Strict):
    """The LLM judge's pairwise win rate of a canary against stable, from its closed windows
    (docs/judge.md). The promotion gate passes when the win rate's lower bound is at least
    ``threshold``; the rollback fires only when the canary is surely worse: the upper bound
    below ``threshold``. Under ``min_pairs`` compared prompts both are inconclusive."""

    threshold: float = Field(default=0.45, ge=0, le=1, description="as judge.gate_threshold")
    min_pairs: int = Field(default=20, ge=1, description="as judge.min_pairs")
    enabled: bool = Field(default=True, description="the rollback; the gate is always recorded")
    gate_promotion: bool = Field(
        default=False, description="rollout stages advance only while the canary's gate passes"
    )


class RollbackTriggers(_Strict):
    safety_incidents: CountRule = Field(
        default_factory=lambda: CountRule(max_count=2, detectors=["toxicity"])
    )
    error_rate: RateRule = Field(default_factory=lambda: RateRule(threshold=0.05))
    p99_latency: LatencyRule = Field(default_factory=lambda: LatencyRule(threshold_ms=5000.0))
    complaint_rate: RateRule = Field(default_factory=lambda: RateRule(threshold=0.01))
    detector_rates: dict[str, RateRule] = Field(
        default_factory=lambda: {
            "toxicity": RateRule(threshold=0.02),
            "pii": RateRule(threshold=0.01),
            # No absolute hallucination rule: the shipped grounding flags 46 % of right answers
            # (detectors/assets/hallucination.json); canary_vs_stable compares it instead.
            "injection": RateRule(threshold=0.10),
        }
    )
    bias_disparity: RateRule = Field(default_factory=lambda: RateRule(threshold=0.05))
    canary_vs_stable: ComparisonRule = Field(default_factory=ComparisonRule)
    judge_win_rate: JudgeRule = Field(default_factory=JudgeRule)


class KillConditions(_Strict):
    safety_critical: RateRule = Field(default_factory=lambda: RateRule(threshold=0.10))
    safety_detectors: list[str] = Field(default_factory=lambda: ["toxicity"], min_length=1)
    cascade_failure: RateRule = Field(default_factory=lambda: RateRule(threshold=0.50))
    data_breach: CountRule = Field(
        default_factory=lambda: CountRule(max_count=0, detectors=["pii"], min_samples=1)
    )


class Stage(_Strict):
    """A rollout stage: the canary's traffic share and what it must show to advance."""

    name: str = Field(min_length=1)
    traffic_percent: float = Field(gt=0, le=100)
    min_events: int = Field(default=1000, ge=1)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)


class Webhooks(_Strict):
    rollback: list[str] = Field(default_factory=list)
    kill: list[str] = Field(default_factory=list)
    resume: list[str] = Field(default_factory=list)
    promote: list[str] = Field(default_factory=list, description="rollout stage advanced")
    budget: list[str] = Field(default_factory=list, description="a budget threshold crossed")
    deadline_s: float = Field(default=3600.0, gt=0, description="retry until, then give up")
    timeout_s: float = Field(default=5.0, gt=0)


BudgetMetric = Literal["cost_usd", "input_tokens", "output_tokens", "total_tokens"]
BudgetPeriod = Literal["hour", "day", "month"]


class Budget(_Strict):
    """A token or cost budget per calendar period (UTC): one alert per threshold per period.

    Spend is summed per model, over the windows of every series whose model matches ``model``
    (a glob) and whose deployment is in ``deployments`` (empty: all). Per model, since the
    policy role's windows are partitioned by model: a worker sees all of a model's spend."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=64)
    model: str = Field(default="*", min_length=1, description="exact name or glob")
    deployments: list[str] = Field(default_factory=list, description="empty: every deployment")
    metric: BudgetMetric = "cost_usd"
    period: BudgetPeriod = "day"
    limit: float = Field(gt=0, description="in the metric's unit (USD or tokens) per period")
    thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.8, 1.0], min_length=1, description="shares of limit"
    )
    enabled: bool = True

    @model_validator(mode="after")
    def _thresholds_valid(self) -> Budget:
        if any(not 0 < t <= 10 for t in self.thresholds):
            raise ValueError("thresholds are shares of the limit, each in (0, 10], e.g. 0.8")
        if self.thresholds != sorted(set(self.thresholds)):
            raise ValueError("thresholds must be distinct and in increasing order")
        return self


class Policy(_Strict):
    """Everything the engine decides with."""

    canary_deployments: list[str] = Field(default_factory=lambda: ["canary"], min_length=1)
    stable_deployments: list[str] = Field(default_factory=lambda: ["stable"], min_length=1)
    stages: list[Stage] = Field(
        default_factory=lambda: [
            Stage(name="canary-5", traffic_percent=5),
            Stage(name="canary-25", traffic_percent=25),
            Stage(name="full", traffic_percent=100),
        ]
    )
    rollback: RollbackTriggers = Field(default_factory=RollbackTriggers)
    kill_switch: KillConditions = Field(default_factory=KillConditions)
    min_samples: int = Field(default=50, ge=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    evaluation_windows: int = Field(default=2, ge=1, le=60)
    recovery_ratio: float = Field(
        default=0.8, gt=0, le=1, description="clear when the upper bound < threshold × this"
    )
    cooldown_s: float = Field(default=300.0, ge=0)
    incident_resolve_after_s: float = Field(
        default=300.0,
        ge=0,
        description="an incident resolves once all its rules have been resolved this long "
        "(window time); a rule firing meanwhile joins it",
    )
    dry_run: bool = False
    webhooks: Webhooks = Field(default_factory=Webhooks)
    budgets: list[Budget] = Field(default_factory=list)

    @model_validator(mode="after")
    def _deployments_disjoint(self) -> Policy:
        both = set(self.canary_deployments) & set(self.stable_deployments)
        if both:
            raise ValueError(
                f"{sorted(both)} listed as both canary and stable deployments; "
                "a deployment is one or the other"
            )
        percents = [s.traffic_percent for s in self.stages]
        if percents != sorted(percents):
            raise ValueError("stages must be in increasing traffic_percent order")
        names = [b.name for b in self.budgets]
        if len(names) != len(set(names)):
            raise ValueError("budget names must be unique (they name the rules and metrics)")
        return self


def describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid policy in {source}:"]
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "(top level)"
        given = error.get("input")
        shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
        fix = (
            "remove it (unknown field; check the spelling against docs/policy.md)"
            if error["type"] == "extra_forbidden"
            else "set it to a valid value (see docs/policy.md)"
        )
        lines.append(f"  {path}: {error['msg']}{shown}. Fix: {fix}.")
    return "\n".join(lines)


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path``, or the defaults when ``path`` is None."""
    if path is None:
        return Policy()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(
            f"policy file {path}: {exc.strerror}. Fix: point policy.file at it."
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"policy file {path}: the top level must be a mapping of fields")
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(exc, str(path))) from exc
