"""Does ONNX Runtime (fp32 or int8) embed faster than our torch CPU path? Same texts, same run.

Run: ``.venv/bin/python -m bench.onnx_cpu``. Three ``EmbeddingService`` instances on CPU with
the cache off: ``backend="torch"`` (Rust tokenizer threads + torch), ``"onnx"`` (the
transformer exported to ONNX, run by ONNX Runtime, mean pooling) and ``"onnx-int8"`` (the
export after ``quantize_dynamic``). Prints texts/s, the ratio to torch, and the mean cosine
between each backend's vectors and torch's (int8 moves them). Exports go to a temporary
cache so the timing never includes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.embedding import eval_texts
from detectors.embedding import EmbeddingService


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = eval_texts()[: args.n]
    result: dict[str, Any] = {"texts": len(texts)}
    with tempfile.TemporaryDirectory() as tmp:
        services = {
            backend: EmbeddingService(
                device="cpu", cache_size=0, backend=backend, onnx_cache_dir=Path(tmp)
            ).start()
            for backend in ("torch", "onnx", "onnx-int8")
        }
        reference = services["torch"].encode(texts)
        for backend, service in services.items():
            service.encode(texts[:64])  # warm
            runs = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                vectors = service.encode(texts)
                runs.append(time.perf_counter() - started)
            rate = len(texts) / statistics.median(runs)
            result[f"{backend}_texts_per_s"] = round(rate, 1)
            result[f"{backend}_engine"] = service.active_backend
            result[f"{backend}_mean_cosine_vs_torch"] = round(
                float(np.mean(np.sum(vectors * reference, axis=1))), 5
            )
        for backend in ("onnx", "onnx-int8"):
            ratio = result[f"{backend}_texts_per_s"] / result["torch_texts_per_s"]
            result[f"{backend}_ratio_vs_torch"] = round(ratio, 3)
    print(json.dumps(result))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
