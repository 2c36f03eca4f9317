"""The CPU forward pass on ONNX Runtime: measured 1.6x the torch path with the same vectors.

``bench/onnx_cpu.py`` measured on this 2-core machine (docs/benchmarks.md): the MiniLM
transformer exported to ONNX runs ~1.6x faster than our torch CPU path with vectors equal to
it (mean cosine 1.0000); dynamic int8 quantisation runs ~3.0x but moves vectors (mean cosine
0.96), which would shift every head calibrated on fp32 embeddings, so int8 is opt-in
(``backend: onnx-int8``). The export happens once per model file into a cache directory
(written atomically, shared by workers); tokenization reuses ``FastEncoder``'s Rust threads.
Only models made of a plain ``Transformer`` and mean ``Pooling`` are exported; others keep
the torch path.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.fast_encode import FastEncoder, Vectors

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Part of every cached file's name (here and detectors/adapted.py): bump it whenever
# ``export_transformer`` writes a different graph, so a file an older exporter wrote is
# never loaded as the new one.
GRAPH_VERSION = "g2"


def _model_key(model_path: Path) -> str:
    weights = sorted(model_path.glob("*.safetensors")) or sorted(model_path.glob("*.bin"))
    parts = [str(model_path.resolve())]
    parts += [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=10).hexdigest()


def export(model: Any, path: Path, *, quantize: bool) -> Path:
    """Export the transformer of ``model`` to ``path`` (int8 when ``quantize``), atomically."""
    return export_transformer(model[0].auto_model, model.tokenizer, path, quantize=quantize)


Feeds = dict[str, npt.NDArray[np.int64]]


def export_transformer(
    transformer: Any, tokenizer: Any, path: Path, *, quantize: bool,
    calibration: Sequence[Feeds] = (),
) -> Path:  # fmt: skip
    """Export a Hugging Face encoder (inputs: ids, mask, token types; output: the last hidden
    state) to ``path`` (int8 when ``quantize``: static with ``calibration`` batches, else
    dynamic), atomically."""
    import torch

    class Hidden(torch.nn.Module):
        """The transformer with positional inputs, returning the last hidden state."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            out = self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return out.last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    sample = tokenizer(["a sample sentence"], return_tensors="pt")
    fp32 = tmp.with_suffix(".fp32.tmp") if quantize else tmp
    # The tracer warns about two shape checks it freezes (padding length, causal flag); for an
    # encoder both are constant, and the vectors are tested equal across lengths.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(transformer.float().eval()).eval(),
            tuple(sample[name] for name in INPUTS),
            str(fp32),
            input_names=list(INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "length"} for n in (*INPUTS, "last_hidden_state")},
            opset_version=17,
            dynamo=False,
        )
    if quantize:
        quantize_int8(fp32, tmp, calibration)
        fp32.unlink()
    tmp.replace(path)
    return path


def quantize_int8(source: Path, target: Path, calibration: Sequence[Feeds] = ()) -> None:
    """int8 weights. With ``calibration`` batches, static: every activation's range is fixed
    from them once, so an input scores the same whatever it is batched with (dynamic
    quantisation takes each batch's own range: a toxicity logit moved by up to 0.33 with its
    neighbours). Without, dynamic."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if not calibration:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> Feeds | None:
            return next(self._batches, None)

    quantize_static(
        str(source), str(target), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        op_types_to_quantize=["MatMul"],
    )  # fmt: skip


class OnnxEncoder(FastEncoder):
    """``FastEncoder``'s tokenizer threads feeding an ONNX Runtime session; mean pooling."""

    session: Any = None

    @classmethod
    def for_model(
        cls, model: Any, model_path: Path, cache_dir: Path, *, quantize: bool = False
    ) -> OnnxEncoder | None:
        """Export (once) and load; None when the model or ONNX Runtime does not allow it."""
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        from sentence_transformers.models import Pooling

        pooling = model[1] if len(model) > 1 else None
        if not isinstance(pooling, Pooling) or pooling.pooling_mode != "mean":
            return None
        base = FastEncoder.from_model(model)
        if base is None or "token_type_ids" not in base.input_names:
            return None
        kind = "int8" if quantize else "fp32"
        path = cache_dir / f"{_model_key(model_path)}-{GRAPH_VERSION}-{kind}.onnx"
        if not path.is_file():
            export(model, path, quantize=quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        encoder = cls(model, base.tokenizer, base.input_names, min(4, os.cpu_count() or 1))
        base.close()
        encoder.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        return encoder

    def _arrays(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    def encode(self, texts: Any, batch_size: int) -> Vectors:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [[texts[i] for i in order[s : s + batch_size]]
                   for s in range(0, len(order), batch_size)]  # fmt: skip
        pending = [self.pool.submit(self._arrays, batch) for batch in batches]
        pooled = []
        for future in pending:
            features = future.result()
            hidden = self.session.run(None, features)[0]
            mask = features["attention_mask"][..., None].astype(np.float32)
            pooled.append((hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None))
        stacked = np.concatenate(pooled).astype(np.float32)
        stacked /= np.clip(np.linalg.norm(stacked, axis=1, keepdims=True), 1e-12, None)
        out = np.empty_like(stacked)
        out[np.asarray(order)] = stacked
        return out
