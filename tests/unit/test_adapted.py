"""A LoRA-adapted classifier round-trips: what training scores, the shipped artifact scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.adapted import AdaptedClassifier, AdapterSpec
from detectors.training.adapter import Example, TrainConfig, train

pytest.importorskip("peft")


def test_saved_adapter_scores_what_training_scored(tmp_path: Path) -> None:
    examples = [
        Example("you are a worthless idiot", 1),
        Example("thanks, that helped a lot", 0),
        Example("I will hurt you", 1, context="what do you think of me?"),
        Example("The museum opens at nine.", 0, context="When does it open?"),
    ]
    config = TrainConfig(labels=("toxic",), rank=4, alpha=8, epochs=2, batch_size=2, seed=3,
                         device="cpu", log_every=1000)  # fmt: skip
    trained = train(examples, config, log=lambda _: None)
    trained.save(tmp_path, {"toxic": 0.5}, {"name": "test"})
    spec = AdapterSpec.read(tmp_path)
    assert spec.labels == ("toxic",) and spec.thresholds == {"toxic": 0.5}
    assert spec.scale == 2.0 and spec.metadata["name"] == "test"
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) < 2_000_000  # small, not a model

    loaded = AdaptedClassifier(tmp_path, device="cpu")
    inputs = [e.text if e.context is None else (e.context, e.text) for e in examples]
    expected = trained.logits(examples)[:, 0]
    got = loaded.logits(inputs)[:, 0]
    np.testing.assert_allclose(got, expected, atol=2e-2)  # float16 factors and head
    probs = loaded.probabilities(inputs)
    assert probs.shape == (4,) and ((probs > 0) & (probs < 1)).all()


def test_not_an_adapter_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter.json"):
        AdaptedClassifier(tmp_path)


def test_onnx_runtime_scores_what_torch_scores(tmp_path: Path) -> None:
    """On CPU the merged model runs on ONNX Runtime (exported once into the cache)."""
    pytest.importorskip("onnxruntime")
    from detectors.toxicity import DEFAULT_ADAPTER

    inputs: list[str | tuple[str, str]] = [
        "Thanks, that helped a lot.",
        ("Insult me", "You are a worthless idiot."),
        "ok",
    ]
    onnx = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend="onnx",
                             onnx_cache_dir=tmp_path).load()  # fmt: skip
    torch_path = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend="torch").load()
    assert onnx._session is not None and torch_path._session is None
    assert list(tmp_path.glob("adapter-*-fp32.onnx"))
    np.testing.assert_allclose(onnx.logits(inputs), torch_path.logits(inputs), atol=1e-4)


def test_int8_runs_only_with_thresholds_calibrated_on_its_scores(tmp_path: Path) -> None:
    """``auto`` on CPU quantises an adapter that ships int8 thresholds, names it, and flags
    with those thresholds; fp32 paths keep the fp32 thresholds; an uncalibrated one stays fp32."""
    pytest.importorskip("onnxruntime")
    from detectors.adapted import INT8
    from detectors.toxicity import DEFAULT_ADAPTER

    spec = AdapterSpec.read(DEFAULT_ADAPTER)
    assert INT8 in spec.backend_thresholds
    auto = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend="auto", onnx_cache_dir=tmp_path)
    assert auto.quantized and auto.name.endswith("-int8")
    assert auto.thresholds == spec.backend_thresholds[INT8]
    auto.load()
    assert list(tmp_path.glob("adapter-*-int8.onnx"))
    for backend in ("onnx", "torch"):
        fp32 = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend=backend)
        assert not fp32.quantized and fp32.thresholds == spec.thresholds
        assert not fp32.name.endswith("-int8")

    uncalibrated = tmp_path / "uncalibrated"
    uncalibrated.mkdir()
    (uncalibrated / "adapter.safetensors").write_bytes(
        (DEFAULT_ADAPTER / "adapter.safetensors").read_bytes()
    )
    AdapterSpec(spec.labels, spec.rank, spec.alpha, spec.max_length, spec.thresholds).write(
        uncalibrated
    )
    assert not AdaptedClassifier(uncalibrated, device="cpu", backend="auto").quantized
    assert AdaptedClassifier(uncalibrated, device="cpu", backend=INT8).quantized
