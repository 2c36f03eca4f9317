"""Sampled detectors per window: how many events each one scored, and the sampled fraction.

The embed role may score only a sample of the events (``detectors.<name>.sample_rate``, or
adaptive to its backlog: docs/sampling.md). ``scored`` maps a sampled detector to the events it
scored in the window, the denominator of its ``flag_rates`` entry; ``sample_rates`` is
``scored / events``. A detector absent from ``scored`` scored every event, as in every row
written before this migration, so old rows read as they always did.
"""

STATEMENTS = [
    """
    ALTER TABLE {db}.windows
        ADD COLUMN IF NOT EXISTS scored Map(String, UInt64) AFTER version,
        ADD COLUMN IF NOT EXISTS sample_rates Map(String, Float64) AFTER scored
    """,
]
