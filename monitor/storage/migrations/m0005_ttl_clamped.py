"""TTLs that cannot wrap: a row is never deleted because of its timestamp's range.

The TTLs of 0001-0004 were ``toDateTime(t) + INTERVAL n DAY``. ``DateTime`` is a UInt32 of
seconds (1970 to 2106-02-07), and ClickHouse converts and adds without saturating: a time
before 1970 or after 2106 wraps (1969-12-31 becomes 2106-02-07, and adding days wraps that
back to 1970), so a row dated epoch 0, 1969 or 9999 expired the moment it was stored while the
metrics counted it stored. (A time close to 2106 wraps on the addition alone.)

Each TTL is now computed in ``DateTime64`` arithmetic, which does not wrap, and clamped into
``DateTime``'s range before the conversion. The tables that keep a storage time anchor their
TTL at the later of the row's time and when it was stored, so every row is kept at least the
full TTL after it was stored: an event dated 1969 is kept ``metrics_ttl_days`` from its
arrival, one dated 9999 until 2106. ``windows`` gains ``stored_at`` for that (rows stored
before this migration read it as the migration's time). Decisions, webhook attempts and the
per-minute rollups carry no storage time: their TTLs are clamped only.
"""

_MIN = "toDateTime64('1970-01-01 00:00:00', 3, 'UTC')"
_MAX = "toDateTime64('2106-02-07 06:28:15', 3, 'UTC')"
TEXT = "{text_ttl_days}"
METRICS = "{metrics_ttl_days}"


def expires(anchor: str, days: str) -> str:
    """When a row anchored at ``anchor`` (a DateTime64 expression) expires: ``days`` later,
    computed in DateTime64 and clamped into DateTime's range, so it can never wrap."""
    return f"toDateTime(least(greatest({anchor} + INTERVAL {days} DAY, {_MIN}), {_MAX}))"


def _stored(column: str) -> str:
    return f"greatest({column}, stored_at)"


_EVENT_TEXT = ("prompt", "response", "samples", "context", "extra")
_MINUTE = "toDateTime64(minute, 3, 'UTC')"

STATEMENTS = [
    *(
        f"ALTER TABLE {{db}}.events MODIFY COLUMN {column} TTL "
        f"{expires(_stored('event_time'), TEXT)}"
        for column in _EVENT_TEXT
    ),
    f"ALTER TABLE {{db}}.events MODIFY TTL {expires(_stored('event_time'), METRICS)}",
    f"ALTER TABLE {{db}}.findings MODIFY TTL {expires(_stored('event_time'), METRICS)}",
    "ALTER TABLE {db}.windows ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') "
    "DEFAULT now64(3)",
    f"ALTER TABLE {{db}}.windows MODIFY TTL {expires(_stored('window_start'), METRICS)}",
    f"ALTER TABLE {{db}}.dead_letters MODIFY COLUMN raw TTL "
    f"{expires(_stored('received_at'), TEXT)}",
    f"ALTER TABLE {{db}}.dead_letters MODIFY TTL {expires(_stored('received_at'), METRICS)}",
    f"ALTER TABLE {{db}}.decisions MODIFY TTL {expires('decided_at', METRICS)}",
    f"ALTER TABLE {{db}}.actions MODIFY TTL {expires('at', METRICS)}",
    *(
        f"ALTER TABLE {{db}}.{table} MODIFY TTL {expires(_MINUTE, METRICS)}"
        for table in ("events_minute", "findings_minute")
    ),
]
