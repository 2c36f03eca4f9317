"""Bias statistics: refusals, sentiment, disparity with its interval, and the probe pack."""

from __future__ import annotations

import pytest

from detectors.bias import (
    GroupStats,
    group_counts,
    group_disparities,
    is_refusal,
    probe_prompts,
    sentiment,
)


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I cannot provide that information.", True),
        ("As an AI, I can't share personal opinions.", True),
        ("Sorry, I can't do that.", True),
        ("I must decline this request.", True),
        ("Sure! Here is a reference letter.", False),
        ("I can help with that: first, open Settings.", False),
        ("The report says I cannot be sure; here are the numbers.", False),
    ],
)
def test_refusals(text: str, refusal: bool) -> None:
    assert is_refusal(text) is refusal


def test_sentiment_sign() -> None:
    assert sentiment("What a wonderful, kind and helpful person.") > 0.5
    assert sentiment("They are awful, lazy and dishonest.") < -0.5


def test_a_real_gap_has_an_interval_above_zero() -> None:
    stats = GroupStats()
    for i in range(40):
        stats.add("a", "I'm sorry, but I can't help with that." if i < 20 else "Sure.", False)
        stats.add("b", "I'm sorry, but I can't help with that." if i < 2 else "Sure.", False)
    result = stats.disparity("refusal_rate")
    assert result is not None
    assert (result.highest, result.lowest) == ("a", "b")
    assert result.value == pytest.approx(0.45)
    assert result.significant and result.low <= 0.45 <= result.high


def test_equal_groups_are_not_significant() -> None:
    stats = GroupStats()
    for i in range(30):
        for group in ("a", "b", "c"):
            stats.add(group, "I'm sorry, but I can't help." if i % 10 == 0 else "Sure.", False)
    result = stats.disparity("refusal_rate")
    assert result is not None and result.value == 0.0 and not result.significant


def test_too_little_data_is_inconclusive_not_fair() -> None:
    stats = GroupStats()
    stats.add("a", "Sure.", True)
    stats.add("b", "Sure.", False)
    assert stats.disparity("toxicity_rate") is None
    with pytest.raises(ValueError, match="unknown metric"):
        stats.disparity("vibes")


def test_probe_pack_is_counterfactual() -> None:
    prompts = probe_prompts()
    by_probe: dict[str, list[dict[str, str]]] = {}
    for p in prompts:
        by_probe.setdefault(p["probe_id"], []).append(p)
    assert len(by_probe) == 8
    for variants in by_probe.values():
        assert len({v["group"] for v in variants}) == len(variants) >= 2
        skeletons = {v["prompt"].split(" ")[0] for v in variants}
        assert len(skeletons) == 1  # same template, only the group term differs


def counts(n: int, refusals: int, toxic: int = 0, sentiment_value: float = 0.0) -> list[float]:
    return [n, refusals, n * sentiment_value, n * sentiment_value**2, n, toxic]


def test_window_disparity_from_counts() -> None:
    groups = {"a": counts(100, 40), "b": counts(100, 5)}
    by_metric = {d.metric: d for d in group_disparities(groups)}
    refusal = by_metric["refusal_rate"]
    assert (refusal.highest, refusal.lowest) == ("a", "b")
    assert refusal.value == pytest.approx(0.35)
    assert 0 < refusal.low < 0.35 < refusal.high
    assert refusal.significant


def test_window_disparity_of_equal_groups_is_not_significant() -> None:
    groups = {"a": counts(60, 6), "b": counts(60, 6)}
    refusal = {d.metric: d for d in group_disparities(groups)}["refusal_rate"]
    assert refusal.value == 0.0
    assert not refusal.significant


def test_window_disparity_needs_two_groups_with_enough_responses() -> None:
    assert group_disparities({"a": counts(100, 40), "b": counts(4, 0)}) == []


def test_group_counts_of_one_response() -> None:
    row = group_counts("I'm sorry, but I can't help with that.", toxic=None)
    assert row[0] == 1.0 and row[1] == 1.0
    assert row[4] == 0.0  # toxicity did not score it
