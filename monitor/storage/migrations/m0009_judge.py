"""LLM-as-judge results, typed for analysts and dashboards (docs/judge.md).

The judge role stores its results as findings (the sink's existing path, no table of its own):
detector ``judge`` for grades, ``judge_pairwise`` for canary-vs-stable comparisons and, with
category ``window``, one row per closed window with the win rate and its bootstrap interval.
These views give them columns:

- ``v_judge_pairwise_windows``: per (model, canary version, window): win rate, interval,
  counts, the gate's verdict (pass / fail / inconclusive), the judge model and family.
- ``v_judge_grades``: per graded event: the 1-5 grade, parse errors, the judge and the graded
  model's families (self-preference checks), cost.
"""

STATEMENTS = [
    """
    CREATE VIEW IF NOT EXISTS {db}.v_judge_pairwise_windows AS
    SELECT
        event_time AS window_start,
        fromUnixTimestamp64Milli(toInt64OrZero(details['window_end_ms']), 'UTC') AS window_end,
        model, model_version AS canary_version, deployment,
        details['stable_versions'] AS stable_versions,
        score AS win_rate,
        toFloat64OrZero(details['low']) AS win_rate_low,
        toFloat64OrZero(details['high']) AS win_rate_high,
        toUInt32OrZero(details['n']) AS pairs,
        toUInt32OrZero(details['wins']) AS wins,
        toUInt32OrZero(details['ties']) AS ties,
        toUInt32OrZero(details['losses']) AS losses,
        toFloat64OrZero(details['confidence']) AS confidence,
        details['gate'] AS gate,
        toFloat64OrZero(details['gate_threshold']) AS gate_threshold,
        details['judge_model'] AS judge_model, details['judge_family'] AS judge_family,
        detector_version AS rubric_version
    FROM {db}.findings FINAL
    WHERE detector = 'judge_pairwise' AND category = 'window'
    """,
    """
    CREATE VIEW IF NOT EXISTS {db}.v_judge_grades AS
    SELECT
        event_time, request_id, model, model_version, deployment, route,
        category = 'parse_error' AS parse_error,
        toUInt8OrZero(details['grade']) AS grade, score, flagged,
        details['judge_model'] AS judge_model, details['judge_family'] AS judge_family,
        details['model_family'] AS model_family,
        details['same_family'] = 'true' AS same_family,
        toFloat64OrZero(details['cost_usd']) AS cost_usd,
        detector_version AS rubric_version
    FROM {db}.findings FINAL
    WHERE detector = 'judge'
    """,
]
