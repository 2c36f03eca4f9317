"""The benchmark guard: run benchmarks, keep their results in ``bench/results/``, and flag a
figure that moved by more than 20 % against the committed result.

A throughput once fell 2.7x and nothing noticed; this is what notices. Each benchmark prints one
JSON line last; the guard stores it with the machine, the date and the commit, and ``compare``
reads the committed file (``git show HEAD:...``) so a fresh run in the working tree is judged
against what was last committed, not against itself.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

RESULTS: Final = Path(__file__).parent / "results"
TOLERANCE: Final = 0.20


@dataclass(frozen=True)
class Figure:
    """One guarded figure: a dotted path into the benchmark's JSON line, and which way is good."""

    path: str
    better: Literal["higher", "lower"]


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    guarded: tuple[Figure, ...]
    default: bool = True
    module: str = ""  # bench.<module>; the name when empty

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", f"bench.{self.module or self.name}", *self.args]


def _h(path: str) -> Figure:
    return Figure(path, "higher")


def _l(path: str) -> Figure:
    return Figure(path, "lower")


# The default set is the cheap path (what every hot-path change must re-run); the rest run by
# name (``python -m bench run semantic``) because they take minutes or need the eval data.
BENCHES: Final = {
    b.name: b
    for b in (
        # Two worker processes (score | aggregate+policy+sink), p99 at 5,000 events/s paced.
        Bench(
            "pipeline",
            (),
            (_h("ratio"), _h("pipeline_events_per_s"), _l("worker_cpu_us_per_event"), _l("p99_ms")),
        ),
        # Every role in one process, p99 at 2,000 events/s paced.
        Bench(
            "pipeline-one",
            ("--one-process", "--paced-rate", "2000"),
            (_h("ratio"), _h("pipeline_events_per_s"), _l("worker_cpu_us_per_event"), _l("p99_ms")),
            module="pipeline",
        ),
        Bench("pii", (), (_h("speedup"), _h("ours.PHONE.f1"), _h("ours.EMAIL_ADDRESS.f1"))),
        Bench("semantic", (), (_h("ratio_scorer_to_baseline"), _h("scorer_events_per_s"))),
        Bench("spans", (), (_h("score_ratio_proto"), _h("score_ratio_json")), False),
        Bench("proxy", (), (_l("overhead_p50_ms"),), False),
        Bench("onnx_cpu", (), (_h("onnx_ratio_vs_torch"), _h("onnx-int8_ratio_vs_torch")), False),
        Bench("embedding", (), (_h("ratio"),), False),
        Bench("reaction", ("--json",), (_h("speedup_p50"), _l("p50_s")), False),
    )
}


def machine() -> dict[str, Any]:
    """What a figure is true for: the CPU, its cores, the memory, Python, a GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],  # noqa: S607
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        if gpu:
            info["gpu"] = gpu
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def revision() -> str:
    try:
        rev = _git("rev-parse", "--short", "HEAD").strip()
        dirty = _git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}+dirty" if dirty else rev


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args],  # noqa: S607
        cwd=RESULTS.parent.parent, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def run_one(bench: Bench, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run one benchmark in its own process (its output shown as it goes); its JSON line."""
    command = [*bench.command, *extra]
    print(f"$ {' '.join(['python', *command[1:]])}", flush=True)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    last = ""
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        if line.startswith("{"):
            last = line
    if process.wait() != 0:
        raise RuntimeError(f"bench.{bench.name} exited with {process.returncode}")
    if not last:
        raise RuntimeError(f"bench.{bench.name} printed no JSON line (skipped?)")
    result: dict[str, Any] = json.loads(last)
    return result


def record(bench: Bench, result: dict[str, Any], extra: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "bench": bench.name,
        "command": " ".join(
            ["python -m", f"bench.{bench.module or bench.name}", *bench.args, *extra]
        ).strip(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "revision": revision(),
        "machine": machine(),
        "result": result,
    }


def committed(name: str) -> dict[str, Any] | None:
    """The result as last committed (HEAD), else the file in the working tree, else None."""
    relative = f"bench/results/{name}.json"
    try:
        loaded: dict[str, Any] = json.loads(_git("show", f"HEAD:{relative}"))
        return loaded
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        pass
    path = RESULTS / f"{name}.json"
    if path.is_file():
        from_file: dict[str, Any] = json.loads(path.read_text())
        return from_file
    return None


def lookup(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Change:
    bench: str
    figure: Figure
    before: float | None
    after: float | None

    @property
    def moved(self) -> float | None:
        if self.before is None or self.after is None or self.before == 0:
            return None
        return self.after / self.before - 1.0

    @property
    def verdict(self) -> Literal["ok", "regressed", "improved", "missing"]:
        moved = self.moved
        if moved is None:
            return "missing"
        if abs(moved) <= TOLERANCE:
            return "ok"
        worse = moved < 0 if self.figure.better == "higher" else moved > 0
        return "regressed" if worse else "improved"


def changes(name: str, before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    return [
        Change(name, f, lookup(before["result"], f.path), lookup(after["result"], f.path))
        for f in BENCHES[name].guarded
    ]


def describe(change: Change) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:,.3f}".rstrip("0").rstrip(".")

    moved = change.moved
    delta = "" if moved is None else f"{moved:+.0%}"
    mark = {"ok": "", "regressed": "  <-- REGRESSED", "improved": "  <-- improved: commit it",
            "missing": "  (not comparable)"}[change.verdict]  # fmt: skip
    return (
        f"{change.bench:<10} {change.figure.path:<28} {fmt(change.before):>12} -> "
        f"{fmt(change.after):<12} {delta:>6} ({change.figure.better} is better){mark}"
    )


def selected(names: Sequence[str]) -> list[Bench]:
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown benchmark {unknown}; choose from {sorted(BENCHES)}")
    return [BENCHES[n] for n in names] if names else [b for b in BENCHES.values() if b.default]
