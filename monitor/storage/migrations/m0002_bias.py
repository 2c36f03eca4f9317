"""Bias per window: each group's counts and the disparity (max − min) with its bounds.

``groups`` maps a group to [n, refusals, sentiment sum, sentiment², toxicity scored, toxic]
(see detectors/bias.py); the three disparity maps are keyed by metric (toxicity_rate,
refusal_rate, sentiment).
"""

STATEMENTS = [
    """
    ALTER TABLE {db}.windows
        ADD COLUMN IF NOT EXISTS groups Map(String, Array(Float64)) AFTER flag_rates,
        ADD COLUMN IF NOT EXISTS bias_disparity Map(String, Float64) AFTER groups,
        ADD COLUMN IF NOT EXISTS bias_low Map(String, Float64) AFTER bias_disparity,
        ADD COLUMN IF NOT EXISTS bias_high Map(String, Float64) AFTER bias_low
    """,
]
