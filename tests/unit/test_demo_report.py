"""The demo report's judge section: the policy's promotion gates and judge rule, summarised."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from monitor.devtools.report import JUDGE_DECISIONS, _print_judge_policy

START = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def rows_of(decisions: list[tuple[Any, ...]]) -> Any:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        assert sql == JUDGE_DECISIONS
        return decisions

    return rows


def test_the_report_shows_each_versions_newest_gate_and_the_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gate, rule = "gate.judge_win_rate", "rollback.judge_win_rate"
    _print_judge_policy(rows_of([
        (gate, "inconclusive", "bot", "v2", START, 4, 0.5, 0.5, 0.5, ""),
        (gate, "pass", "bot", "v2", START, 30, 0.5, 0.5, 0.5, ""),
        (rule, "healthy", "bot", "v2", START, 30, 0.5, 0.5, 0.5, ""),
        (gate, "fail", "bot", "v3", START, 25, 0.0, 0.0, 0.0, ""),
        (rule, "fire", "bot", "v3", START, 25, 0.0, 0.0, 0.0, "inc-1"),
        (gate, "inconclusive", "bot", "v3", START, 3, 0.0, 0.0, 0.0, ""),
    ]))  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "promotion gate (newest window): bot/v2 pass, bot/v3 inconclusive (last verdict: fail)"
        in out
    )
    assert "rollback.judge_win_rate fired: bot/v3 (fire)" in out
    assert "[0.500, 0.500]" in out and "inc-1" in out


def test_without_a_surely_worse_canary_the_report_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_judge_policy(rows_of([]))
    out = " ".join(capsys.readouterr().out.split())
    assert "no window decided yet" in out and "no (no canary surely worse" in out
