"""Config errors name the field, the variable to set, and the value given."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import ensure_data_dir, load_settings
from monitor.errors import ConfigError


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.active_roles == ("score", "embed", "aggregate", "policy", "sink")
    assert settings.storage_dsn.startswith("chdb://")


def test_env_overrides_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_PIPELINE__BATCH_SIZE", "250")
    monkeypatch.setenv("LLM_MONITOR_ROLES", '["score"]')
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9999")
    settings = load_settings()
    assert settings.pipeline.batch_size == 250
    assert settings.active_roles == ("score",)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9999"


def test_bad_value_names_field_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_PIPELINE__BATCH_SIZE", "-5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "pipeline.batch_size" in message
    assert "LLM_MONITOR_PIPELINE__BATCH_SIZE" in message
    assert "-5" in message


def test_unknown_role_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_ROLES", '["scorer"]')
    with pytest.raises(ConfigError, match="roles"):
        load_settings()


def test_yaml_file_layer_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(
        "pipeline:\n  window_s: 30\n  batch_size: 10\ndetectors:\n  pii:\n    enabled: false\n"
    )
    monkeypatch.setenv("LLM_MONITOR_CONFIG_FILE", str(path))
    monkeypatch.setenv("LLM_MONITOR_PIPELINE__BATCH_SIZE", "20")
    settings = load_settings()
    assert settings.pipeline.window_s == 30
    assert settings.pipeline.batch_size == 20
    assert not settings.detectors.pii.enabled


def test_missing_config_file_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_CONFIG_FILE", "/nonexistent.yaml")
    with pytest.raises(ConfigError, match="Fix"):
        load_settings()


def test_embed_role_without_semantic_detectors_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.app import create_app

    monkeypatch.setenv("LLM_MONITOR_ROLES", '["embed"]')
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    with pytest.raises(ConfigError, match="LLM_MONITOR_DETECTORS__TOXICITY__ENABLED"):
        create_app(load_settings())


def test_missing_model_directory_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_DETECTORS__EMBEDDING__MODEL_PATH", "/nonexistent/model")
    with pytest.raises(ConfigError, match="LLM_MONITOR_DETECTORS__EMBEDDING__MODEL_PATH"):
        load_settings()


def test_event_time_bounds_have_defaults_and_env_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = load_settings().pipeline
    assert (pipeline.max_event_age_s, pipeline.max_future_skew_s) == (604_800, 300)
    monkeypatch.setenv("LLM_MONITOR_PIPELINE__MAX_EVENT_AGE_S", "86400")
    monkeypatch.setenv("LLM_MONITOR_PIPELINE__MAX_FUTURE_SKEW_S", "0")
    pipeline = load_settings().pipeline
    assert (pipeline.max_event_age_s, pipeline.max_future_skew_s) == (86_400, 0)


def test_an_event_size_over_the_record_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_PIPELINE__MAX_EVENT_BYTES", str(3 * 1_048_576))
    with pytest.raises(ConfigError, match="LLM_MONITOR_PIPELINE__MAX_EVENT_BYTES"):
        load_settings()


def test_a_missing_data_dir_is_created(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "a" / "b")
    assert ensure_data_dir(settings).is_dir()


def test_a_data_dir_that_cannot_be_created_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = load_settings(data_dir=tmp_path / "file" / "data")
    with pytest.raises(ConfigError, match="LLM_MONITOR_DATA_DIR") as info:
        ensure_data_dir(settings)
    assert "data_dir" in str(info.value)
