"""Semantic detectors' throughput: events/s through the embed role's scorer, per detector.

Run: ``.venv/bin/python -m bench.semantic [--events N] [--device cpu] [--backend auto]
[--distinct]``
(``auto``, as a worker runs: ONNX Runtime on CPU for the embeddings and the adapters). The
scorer is the one the embed role runs (monitor/scoring/semantic.py) with every semantic
detector on, over the demo's generated traffic (prompts, responses, contexts, samples; the
embedding cache off). The demo repeats its prompts and responses (about one pair in four is
distinct) and every model here scores each distinct text once per call, as production would:
``--distinct`` makes every prompt and response unique, for traffic that never repeats.
Baseline, same process, same texts: bare
``SentenceTransformer.encode`` of every prompt, response, context passage and sample once —
what a single shared forward pass over the event's texts would cost. Then each detector alone,
so a slow one shows. ``--head`` scores with the head-on-embeddings toxicity and the word-overlap
grounding (the detectors before their fine-tuned adapters), for a same-process comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import msgspec

from detectors.embedding import EmbeddingService
from detectors.hallucination import HallucinationDetector
from detectors.injection import InjectionDetector
from detectors.toxicity import ToxicityDetector, ToxicityHead
from monitor.config import DetectorsSettings
from monitor.devtools.generate import generate_events
from monitor.errors import SchemaError
from monitor.ingest.events import Event, decode_event
from monitor.scoring.semantic import SemanticScorer


def events(n: int, distinct: bool = False) -> list[Event]:
    """The demo's traffic; with ``distinct``, every prompt and response made unique (a number
    appended), since the demo repeats them far more than real traffic does and each distinct
    text is scored once per call."""
    out: list[Event] = []
    for _, value in generate_events(n, seed=11, bad_fraction=0.0):
        try:
            event = decode_event(value)
        except SchemaError:
            continue
        if distinct:
            event = msgspec.structs.replace(
                event, prompt=f"{event.prompt_text} ({len(out)})", messages=None,
                response=f"{event.response} ({len(out)})" if event.response else event.response,
            )  # fmt: skip
        out.append(event)
    return out


def texts_of(batch: Sequence[Event]) -> list[str]:
    texts = []
    for e in batch:
        texts += [t for t in (e.prompt_text, e.response or "") if t]
        texts += list(e.context) + list(e.samples)
    return texts


def timed(fn: object, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=200, help="events per scorer call")
    parser.add_argument("--head", action="store_true", help="the pre-adapter detectors")
    parser.add_argument("--backend", default="auto", help="as detectors.embedding.backend")
    parser.add_argument("--distinct", action="store_true", help="no prompt or response repeats")
    args = parser.parse_args(argv)
    batch = events(args.events, args.distinct)
    texts = texts_of(batch)
    service = EmbeddingService(device=args.device, cache_size=0, backend=args.backend).start()
    model = service._model  # the very same loaded model the detectors use
    baseline = timed(lambda: model.encode(texts, batch_size=64, show_progress_bar=False))
    settings = DetectorsSettings.model_validate({
        name: {"enabled": True} for name in ("toxicity", "hallucination", "injection", "bias")
    } | {"embedding": {"device": args.device, "cache_size": 0,
                       "backend": args.backend}})  # fmt: skip
    scorer = SemanticScorer(settings, service, window_s=60)
    if args.head:
        scorer.detectors = [
            ToxicityDetector(service, head=ToxicityHead.load()),
            HallucinationDetector(service, nli=None),
            InjectionDetector(service),
        ]
        for detector in scorer.detectors:
            if isinstance(detector, HallucinationDetector):
                detector.nli = None
                detector.thresholds = dict(HallucinationDetector.THRESHOLD)
    chunks = [batch[i : i + args.batch] for i in range(0, len(batch), args.batch)]
    seconds = timed(lambda: [scorer.process(c) for c in chunks])
    per_detector = {}
    for detector in scorer.detectors:
        per_detector[detector.name] = round(
            len(batch) / timed(lambda d=detector: [d.score(c) for c in chunks]), 1
        )
    report = {
        "events": len(batch), "texts": len(texts), "device": args.device,
        "distinct": args.distinct, "distinct_texts": len(set(texts)),
        "backend": service.active_backend,
        "detectors": [f"{d.name} {d.version}" for d in scorer.detectors],
        "baseline_texts_per_s": round(len(texts) / baseline, 1),
        "baseline_events_per_s": round(len(batch) / baseline, 1),
        "scorer_events_per_s": round(len(batch) / seconds, 1),
        "ratio_scorer_to_baseline": round(baseline / seconds, 3),
        "per_detector_events_per_s": per_detector,
    }  # fmt: skip
    print(json.dumps(report, indent=1))
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
