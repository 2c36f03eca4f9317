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
    inputs += [(f"question {i} " * (i % 5), f"an answer that runs to {i} words " * (i % 3))
               if i % 2 else f"a text of some length {i} " * (i % 7) for i in range(20)]  # fmt: skip
    onnx = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend="onnx",
                             onnx_cache_dir=tmp_path)  # fmt: skip
    onnx.onnx_batch_size = 4  # several batches, reordered back into the inputs' order
    onnx.load()
    torch_path = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend="torch").load()
    assert onnx._session is not None and torch_path._session is None
    assert list(tmp_path.glob("adapter-*-fp32.onnx"))
    np.testing.assert_allclose(onnx.logits(inputs), torch_path.logits(inputs), atol=1e-4)


def test_a_repeated_input_is_scored_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from detectors.toxicity import DEFAULT_ADAPTER

    adapter = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend="torch").load()
    inputs: list[str | tuple[str, str]] = [("q", "ok"), ("q", "fine"), ("q", "ok"), ("r", "ok")]
    expected = np.concatenate([adapter.logits([x]) for x in inputs])
    seen: list[int] = []
    batch_logits = adapter._batch_logits

    def counted(chunk: list[str | tuple[str, str]]) -> np.ndarray:
        seen.append(len(chunk))
        return batch_logits(chunk)

    monkeypatch.setattr(adapter, "_batch_logits", counted)
    np.testing.assert_allclose(adapter.logits(inputs), expected, atol=1e-4)
    assert seen == [3]  # ("q", "ok") once


def test_the_cached_export_is_named_by_weights_graph_and_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file an older exporter wrote (no graph version, or another one) is never loaded."""
    from detectors import onnx_encode
    from detectors.adapted import CALIBRATION_VERSION, INT8
    from detectors.toxicity import DEFAULT_ADAPTER

    fp32 = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend="onnx", onnx_cache_dir=tmp_path)
    int8 = AdaptedClassifier(DEFAULT_ADAPTER, device="cpu", backend=INT8, onnx_cache_dir=tmp_path)
    name = f"adapter-{fp32.digest[:20]}-{onnx_encode.GRAPH_VERSION}"
    assert (fp32.onnx_path.name, int8.onnx_path.name) == (
        f"{name}-fp32.onnx",
        f"{name}-int8-static-{CALIBRATION_VERSION}.onnx",
    )
    assert fp32.onnx_path.parent == tmp_path
    monkeypatch.setattr(onnx_encode, "GRAPH_VERSION", "g-next")
    assert fp32.onnx_path.name == f"adapter-{fp32.digest[:20]}-g-next-fp32.onnx"


def test_tokenized_once_and_padded_per_batch_is_what_the_tokenizer_pads() -> None:
    from transformers import AutoTokenizer

    from detectors.adapted import encode_inputs, padded, tokenize
    from detectors.embedding import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    inputs: list[str | tuple[str, str]] = [("why?", "because " * 90), "ok", ("a", "b c d")]
    tokens = tokenize(tokenizer, inputs, 128)
    expected = encode_inputs(tokenizer, inputs, 128)
    got = padded(tokens, [0, 1, 2], tokenizer.pad_token_id)
    assert set(got) == set(expected)
    for key, array in got.items():
        assert array.dtype == np.int64
        np.testing.assert_array_equal(array, expected[key].numpy())
    single = padded(tokens, [1], tokenizer.pad_token_id)
    assert single["input_ids"].shape == (1, len(tokens["input_ids"][1]))


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
    assert list(tmp_path.glob("adapter-*-int8-static-*.onnx"))
    # Static quantisation: an input scores the same alone as among others (dynamic: up to 0.33).
    # A lone text is encoded one way whatever it is called with: ("", text), pairs or not.
    pairs: list[str | tuple[str, str]] = [
        ("hi", "You are an idiot and nobody likes you."), ("why?", "Because it rained."),
        ("Tell me a story", "Once upon a time " * 20), "A text with no prompt.",
    ]  # fmt: skip
    together = auto.logits(pairs)
    alone = np.vstack([auto.logits([pair]) for pair in pairs])
    np.testing.assert_allclose(together, alone, atol=1e-5)  # float rounding only
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
