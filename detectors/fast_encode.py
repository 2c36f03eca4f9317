"""A leaner forward pass for sentence-transformers models, so the GPU is not starved.

Measured on an H100 (docs/benchmarks.md): MiniLM's fp16 forward pass runs at ~100k texts/s,
but ``SentenceTransformer.encode`` tops out near 7k because it tokenizes through the Python
layer of ``transformers`` (~11k texts/s) on the same thread that drives the GPU. Here the Rust
``tokenizers`` object does the batch work, in a small thread pool (it releases the GIL) that
prepares the next batches while the device runs the current one; outputs stay on the device
until one final copy. Same modules, same weights, same pooling and normalisation: the vectors
match ``encode`` to fp rounding (tested). Models whose first module is not a plain
``Transformer`` with a fast tokenizer keep using ``encode``.

With ``processes`` > 0 the tokenization runs in spawned processes instead of threads: the
remaining limit measured on the H100 was turning each encoding into ids under the GIL, which
processes do in parallel. Tested equal to the threaded path; on an H200 eight processes took
the embed role from 25k to 31k texts/s (docs/benchmarks.md), so CUDA workers use them by
default (``tokenizer_processes``; at most half the host's cores).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
_WORKER_TOKENIZER: list[Any] = []


def _init_worker(tokenizer_json: str, max_length: int, pad_id: int, pad_token: str) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    _WORKER_TOKENIZER.append(tokenizer)


def tokenize_arrays(texts: list[str]) -> dict[str, npt.NDArray[np.int64]]:
    """In a tokenizer process: ids, mask and type ids as arrays (the per-text conversion to
    Python ints, which holds the GIL, happens here, in parallel across processes)."""
    encodings = _WORKER_TOKENIZER[0].encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


class FastEncoder:
    """Tokenize with Rust in threads, run the model's modules, normalise on the device."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        input_names: Sequence[str],
        threads: int,
        processes: int = 0,
        worker_args: tuple[Any, ...] = (),
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.input_names = tuple(input_names)
        self.pin = str(model.device).startswith("cuda")  # page-locked copies only feed a GPU
        self.processes = processes
        self.pool: Executor
        if processes:
            # Tokenizer processes (spawned: the parent may hold CUDA state) so that turning
            # encodings into arrays runs in parallel instead of under this process's GIL.
            self.pool = ProcessPoolExecutor(
                max_workers=processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=worker_args,
            )
        else:
            self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokenize")

    @classmethod
    def from_model(
        cls, model: Any, threads: int | None = None, processes: int = 0
    ) -> FastEncoder | None:
        """Build one for ``model`` (a loaded SentenceTransformer), or None when unsupported."""
        from sentence_transformers.models import Transformer
        from tokenizers import Tokenizer

        first = model[0] if len(model) else None
        hf_tokenizer = getattr(first, "tokenizer", None)
        if not isinstance(first, Transformer) or not getattr(hf_tokenizer, "is_fast", False):
            return None
        assert hf_tokenizer is not None  # noqa: S101 - checked just above
        # A private copy: enabling padding/truncation must not change the model's own tokenizer.
        tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        tokenizer.enable_truncation(int(model.max_seq_length))
        pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        tokenizer.enable_padding(pad_id=pad_id, pad_token=hf_tokenizer.pad_token or "[PAD]")
        names = [n for n in hf_tokenizer.model_input_names if n in ("input_ids", "attention_mask",
                                                                   "token_type_ids")]  # fmt: skip
        worker_args = (
            hf_tokenizer.backend_tokenizer.to_str(),
            int(model.max_seq_length),
            pad_id,
            hf_tokenizer.pad_token or "[PAD]",
        )
        threads = threads or min(4, os.cpu_count() or 1)
        return cls(model, tokenizer, names, threads, processes, worker_args)

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Any]:
        import torch

        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        features: dict[str, Any] = {"input_ids": torch.from_numpy(ids)}
        if "attention_mask" in self.input_names:
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            features["attention_mask"] = torch.from_numpy(mask)
        if "token_type_ids" in self.input_names:
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
            features["token_type_ids"] = torch.from_numpy(types)
        if self.pin:
            features = {k: v.pin_memory() for k, v in features.items()}
        return features

    def encode(self, texts: Sequence[str], batch_size: int) -> Vectors:
        """L2-normalised embeddings in input order; batches are cut from length-sorted texts."""
        import torch

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [
            [texts[i] for i in order[start : start + batch_size]]
            for start in range(0, len(order), batch_size)
        ]
        device = self.model.device
        pending = [self._submit(self._tokenize, batch) for batch in batches]
        outputs = []
        with torch.inference_mode():
            for future in pending:
                result = future.result()
                if self.processes:
                    result = self._from_process(result)
                features = {k: v.to(device, non_blocking=True) for k, v in result.items()}
                outputs.append(self.model(features)["sentence_embedding"])
            stacked = torch.nn.functional.normalize(torch.cat(outputs).float(), dim=1)
            unsorted = torch.empty_like(stacked)
            unsorted[torch.as_tensor(order, device=stacked.device)] = stacked
            return np.asarray(unsorted.cpu().numpy(), dtype=np.float32)

    def _submit(self, tokenize: Any, batch: list[str]) -> Any:
        if self.processes:
            return self.pool.submit(tokenize_arrays, batch)
        return self.pool.submit(tokenize, batch)

    def _from_process(self, arrays: dict[str, Any]) -> dict[str, Any]:
        import torch

        features = {k: torch.from_numpy(v) for k, v in arrays.items() if k in self.input_names}
        if self.pin:
            features = {k: v.pin_memory() for k, v in features.items()}
        return features

    def close(self) -> None:
        # Processes are joined (an unjoined pool breaks at interpreter exit); threads are not.
        self.pool.shutdown(wait=bool(self.processes), cancel_futures=True)
