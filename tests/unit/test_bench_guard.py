"""The benchmark guard flags a guarded figure that moved by more than 20 %, in the bad direction
as a regression (``compare`` exits 1) and in the good one as a result to commit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as cli
from bench import guard
from bench.guard import BENCHES, Change, Figure, changes, lookup


def entry(name: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"bench": name, "machine": {"cores": 2}, "result": result}


def test_lookup_follows_dotted_paths_and_ignores_non_numbers() -> None:
    result = {"ours": {"PHONE": {"f1": 0.96}}, "speedup": 31, "flag": True, "name": "x"}
    assert lookup(result, "ours.PHONE.f1") == pytest.approx(0.96)
    assert lookup(result, "speedup") == 31.0
    assert lookup(result, "flag") is None
    assert lookup(result, "name") is None
    assert lookup(result, "ours.EMAIL.f1") is None


@pytest.mark.parametrize(
    ("better", "before", "after", "verdict"),
    [
        ("higher", 100.0, 85.0, "ok"),
        ("higher", 100.0, 79.0, "regressed"),
        ("higher", 100.0, 121.0, "improved"),
        ("lower", 100.0, 121.0, "regressed"),
        ("lower", 100.0, 70.0, "improved"),
        ("lower", 100.0, None, "missing"),
    ],
)
def test_verdicts(better: Any, before: float, after: float | None, verdict: str) -> None:
    assert Change("b", Figure("x", better), before, after).verdict == verdict


def test_every_default_bench_guards_a_ratio_of_the_pipeline_and_pii() -> None:
    names = {b.name for b in BENCHES.values() if b.default}
    assert {"pipeline", "pii"} <= names
    paths = {f.path for f in BENCHES["pipeline"].guarded}
    assert {"ratio", "worker_cpu_us_per_event"} <= paths


def test_changes_compare_each_guarded_figure() -> None:
    before = entry("pipeline", {"ratio": 0.02, "pipeline_events_per_s": 4000,
                                "worker_cpu_us_per_event": 170, "p99_ms": 400})  # fmt: skip
    after = entry("pipeline", {"ratio": 0.015, "pipeline_events_per_s": 4100,
                               "worker_cpu_us_per_event": 175, "p99_ms": 410})  # fmt: skip
    verdicts = {c.figure.path: c.verdict for c in changes("pipeline", before, after)}
    assert verdicts == {"ratio": "regressed", "pipeline_events_per_s": "ok",
                        "worker_cpu_us_per_event": "ok", "p99_ms": "ok"}  # fmt: skip


def test_compare_without_rerun_exits_1_on_a_regression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = entry("pii", {"speedup": 30.0, "ours": {"PHONE": {"f1": 0.96}}})
    monkeypatch.setattr(cli, "committed", lambda name: committed)
    monkeypatch.setattr(cli, "RESULTS", tmp_path)
    (tmp_path / "pii.json").write_text(json.dumps(entry("pii", {"speedup": 20.0})))
    assert cli.compare(["pii"], rerun=False) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "not comparable" in out
    (tmp_path / "pii.json").write_text(json.dumps(committed))
    assert cli.compare(["pii"], rerun=False) == 0


def test_unknown_names_are_refused() -> None:
    with pytest.raises(SystemExit, match="unknown benchmark"):
        guard.selected(["nope"])
