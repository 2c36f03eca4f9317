"""Embedding throughput inside the pipeline vs bare ``SentenceTransformer.encode``.

Run: ``.venv/bin/python -m bench.embedding`` (CPU here; on a GPU machine it uses CUDA + fp16).
Both sides use the same loaded model object, device, dtype and texts, in this process. The
pipeline side is ``EmbeddingService.embed`` called concurrently by many producers with
score-batch-sized chunks (as the embed role does), merged into micro-batches; its cache is off
so repeats cannot flatter it. Texts are real: HaluEval knowledge passages and answers,
TruthfulQA questions and answers, and tweets from the Davidson set (../shared/eval), or a JSON
list given with --texts.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import sys
import time
from pathlib import Path

from detectors.embedding import EmbeddingService
from detectors.evaluation.data import eval_dir

EVAL = eval_dir()  # LLM_MONITOR_EVAL_DIR, else shared/eval beside the repo


def eval_texts() -> list[str]:
    texts: list[str] = []
    halu = EVAL / "hallucination" / "halueval_qa_one-turn_data.jsonl"
    if halu.is_file():
        for line in halu.read_text().splitlines():
            row = json.loads(line)
            texts += [
                row["knowledge"],
                row["question"],
                row["right_answer"],
                row["hallucinated_answer"],
            ]
    truthful = EVAL / "hallucination" / "TruthfulQA.csv"
    if truthful.is_file():
        with truthful.open(newline="") as f:
            for row in csv.DictReader(f):
                texts.append(row.get("Question", ""))
                texts += [a.strip() for a in row.get("Correct Answers", "").split(";")]
    tweets = EVAL / "toxicity" / "davidson_labeled_data.csv"
    if tweets.is_file():
        with tweets.open(newline="") as f:
            texts += [row["tweet"] for row in csv.DictReader(f)]
    return list(dict.fromkeys(t for t in texts if t.strip()))


def time_it(fn: object, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None, help="local model directory")
    parser.add_argument("--texts", type=Path, default=None, help="JSON list of texts")
    parser.add_argument("--n", type=int, default=4000, help="distinct texts per timed run")
    parser.add_argument("--batch", type=int, default=None, help="forward batch (both sides)")
    parser.add_argument("--chunk", type=int, default=64, help="texts per embed() call")
    parser.add_argument("--max-batch", type=int, default=None, help="micro-batch cap")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--processes", type=int, default=None, help="tokenizer processes")
    args = parser.parse_args()

    corpus = json.loads(args.texts.read_text()) if args.texts else eval_texts()
    if not corpus:
        print("skipped: no texts (pass --texts, or put ../shared/eval beside the repo)")
        return
    # Distinct texts (the corpus is de-duplicated): repeats would flatter encode()'s de-dup.
    texts = corpus[: args.n]
    service = EmbeddingService(
        args.model,
        device=args.device,
        forward_batch=args.batch,
        max_batch=args.max_batch,
        cache_size=0,
        tokenizer_processes=args.processes,
    ).start()
    batch = service.forward_batch
    model = service._model  # the very same object on both sides

    def bare() -> None:
        model.encode(texts, batch_size=batch, convert_to_numpy=True,
                     normalize_embeddings=True, show_progress_bar=False)  # fmt: skip

    async def pipelined() -> None:
        chunks = [texts[i : i + args.chunk] for i in range(0, len(texts), args.chunk)]
        await asyncio.gather(*(service.embed(c) for c in chunks))

    def pipeline() -> None:
        asyncio.run(pipelined())
        asyncio.run(service.stop())

    def sync_encode() -> None:
        service.encode(texts)

    bare()  # warm-up: kernels, allocator, tokenizer
    pipeline()
    bare_s = time_it(bare, args.repeats)
    pipe_s = time_it(pipeline, args.repeats)
    sync_s = time_it(sync_encode, args.repeats)
    import torch

    device = service.device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    dtype = str(next(model.parameters()).dtype)
    chars = statistics.median(len(t) for t in texts)
    print(f"device {name} ({device}, {dtype}), {len(texts)} texts, median {chars:.0f} chars, "
          f"forward batch {batch}, micro-batches up to {service.max_batch}")  # fmt: skip
    print(f"bare SentenceTransformer.encode: {len(texts) / bare_s:,.0f} texts/s")
    per_s = len(texts) / pipe_s
    print(f"EmbeddingService.embed (micro-batched, {args.chunk}/call): {per_s:,.0f} texts/s")
    print(f"EmbeddingService.encode (one call): {len(texts) / sync_s:,.0f} texts/s")
    print(f"ratio embed/bare: {bare_s / pipe_s:.3f}")
    sys.stdout.write(json.dumps({
        "device": name, "dtype": dtype, "n": len(texts), "median_chars": chars,
        "bare_texts_per_s": round(len(texts) / bare_s), "embed_texts_per_s": round(per_s),
        "encode_texts_per_s": round(len(texts) / sync_s), "ratio": round(bare_s / pipe_s, 3),
    }) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
