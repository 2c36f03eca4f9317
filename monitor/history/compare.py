"""Two versions of one detector on the same events: agreement, flag rates, Cohen's kappa per
model version, and the events where they disagree most.

Findings of a version are read from ``findings`` (what ran live) and ``findings_versions``
(backfills, and shadow detectors scoring live traffic: monitor/scoring/shadow.py); one event's
latest row per version counts. Detectors return findings only for the events they matched
(``pii`` for text with PII, ``latency_errors`` for slow or failed calls), so every stored
event counts, and an event a version has no finding for counts as not flagged by it, as in the
windows' flag rates. But only inside the time both versions covered, per
(model, model_version): a version covered the span from its first to its last finding there,
and, when backfilled, from the backfill's start to its checkpoint (``backfills``), which
counts even where it found nothing. An event outside the common span was scored by one version
at most (a backfill still running, a version rolled out later) and is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from monitor.history.checkpoint import TABLE as BACKFILLS_TABLE
from monitor.history.checkpoint import CheckpointStore
from monitor.history.errors import HistoryError
from monitor.history.storage import VERSIONS_TABLE

_WHERE: Final = (
    "detector = {detector:String} AND detector_version IN ({a:String}, {b:String}) "
    "AND event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
    "AND ({model:String} = '' OR model = {model:String})"
)
_EVENTS: Final = (
    "event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
    "AND ({model:String} = '' OR model = {model:String})"
)
_COLUMNS: Final = (
    "detector_version AS v, request_id, model, model_version, event_time, flagged, score, stored_at"
)
# Every stored event of a series both versions covered, inside the span both covered, with each
# version's verdict: its latest row; a LEFT JOIN miss, or argMaxIf over an absent version,
# reads 0 (not flagged, score 0). A version covered a series from its first to its last finding
# there, and from a backfill's start to its position. Composed from the constants above only:
# every value is a bound parameter.
PAIRS_SQL: Final = f"""
WITH scored AS (
    SELECT {_COLUMNS} FROM {{db:Identifier}}.findings FINAL WHERE {_WHERE}
    UNION ALL
    SELECT {_COLUMNS} FROM {{db:Identifier}}.{VERSIONS_TABLE} FINAL WHERE {_WHERE}
),
stored AS (
    SELECT model, model_version, request_id, event_time FROM {{db:Identifier}}.events FINAL
    WHERE {_EVENTS}
),
spans AS (
    SELECT model, model_version, v, min(event_time) AS lo, max(event_time) AS hi
    FROM scored GROUP BY model, model_version, v
    UNION ALL
    SELECT s.model, s.model_version, b.detector_version, b.since, b.event_time
    FROM (SELECT DISTINCT model, model_version FROM stored) AS s
    CROSS JOIN (
        SELECT detector_version, model AS only_model, since, event_time
        FROM {{db:Identifier}}.{BACKFILLS_TABLE} FINAL
        WHERE detector = {{detector:String}} AND detector_version IN ({{a:String}}, {{b:String}})
          AND events > 0
    ) AS b
    WHERE b.only_model = '' OR b.only_model = s.model
),
common AS (
    SELECT model, model_version,
           greatest(minIf(lo, v = {{a:String}}), minIf(lo, v = {{b:String}})) AS lo,
           least(maxIf(hi, v = {{a:String}}), maxIf(hi, v = {{b:String}})) AS hi
    FROM spans GROUP BY model, model_version
    HAVING countIf(v = {{a:String}}) > 0 AND countIf(v = {{b:String}}) > 0
),
verdicts AS (
    SELECT model, model_version, request_id,
           countIf(v = {{a:String}}) > 0 AS has_a, countIf(v = {{b:String}}) > 0 AS has_b,
           argMaxIf(flagged, stored_at, v = {{a:String}}) AS fa,
           argMaxIf(flagged, stored_at, v = {{b:String}}) AS fb,
           argMaxIf(score, stored_at, v = {{a:String}}) AS sa,
           argMaxIf(score, stored_at, v = {{b:String}}) AS sb
    FROM scored GROUP BY model, model_version, request_id
)
SELECT e.model AS model, e.model_version AS model_version, e.request_id AS request_id,
       toUnixTimestamp64Milli(e.event_time) AS event_time_ms, r.has_a AS has_a,
       r.has_b AS has_b, r.fa AS fa, r.fb AS fb, r.sa AS sa, r.sb AS sb
FROM stored AS e
INNER JOIN common AS c ON e.model = c.model AND e.model_version = c.model_version
LEFT JOIN verdicts AS r
    ON e.model = r.model AND e.model_version = r.model_version AND e.request_id = r.request_id
WHERE e.event_time >= c.lo AND e.event_time <= c.hi
"""  # noqa: S608
SUMMARY_SQL: Final = f"""
SELECT model, model_version, count(), countIf(has_a AND has_b), countIf(fa AND fb),
       countIf(fa AND NOT fb), countIf(NOT fa AND fb)
FROM ({PAIRS_SQL}) GROUP BY model, model_version ORDER BY model, model_version
"""  # noqa: S608
EXAMPLES_SQL: Final = f"""
SELECT model, model_version, request_id, event_time_ms, fa, fb, sa, sb
FROM ({PAIRS_SQL}) WHERE fa != fb
ORDER BY model, model_version, abs(sa - sb) DESC, request_id
LIMIT {{examples:UInt32}} BY model, model_version
"""  # noqa: S608
VERSIONS_SQL: Final = f"""
SELECT detector_version, 'findings', count(), countIf(flagged)
FROM {{db:Identifier}}.findings FINAL WHERE detector = {{detector:String}}
GROUP BY detector_version
UNION ALL
SELECT detector_version, '{VERSIONS_TABLE}', count(), countIf(flagged)
FROM {{db:Identifier}}.{VERSIONS_TABLE} FINAL WHERE detector = {{detector:String}}
GROUP BY detector_version
"""  # noqa: S608


def cohen_kappa(both: int, a_only: int, b_only: int, neither: int) -> float | None:
    """Cohen's kappa of two binary raters from their 2x2 table; None when undefined (no events,
    or both raters gave one and the same answer to every event, so chance agreement is 1)."""
    n = both + a_only + b_only + neither
    if n == 0:
        return None
    observed = (both + neither) / n
    rate_a, rate_b = (both + a_only) / n, (both + b_only) / n
    chance = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    if chance >= 1:
        return None
    return (observed - chance) / (1 - chance)


@dataclass(frozen=True)
class Agreement:
    """Two versions' verdicts on the same ``events`` of one model version: the 2x2 table."""

    model: str
    model_version: str
    events: int  # compared: every stored event inside the span both versions covered
    scored_by_both: int  # of those, events both versions have a finding for
    both_flagged: int
    a_only: int
    b_only: int

    def __post_init__(self) -> None:
        if min(self.events, self.both_flagged, self.a_only, self.b_only) < 0 or self.neither < 0:
            raise ValueError(f"inconsistent counts: {self}")

    @property
    def neither(self) -> int:
        return self.events - self.both_flagged - self.a_only - self.b_only

    @property
    def agreement(self) -> float | None:
        """Share of events both versions flagged or both did not."""
        return (self.both_flagged + self.neither) / self.events if self.events else None

    @property
    def flag_rate_a(self) -> float | None:
        return (self.both_flagged + self.a_only) / self.events if self.events else None

    @property
    def flag_rate_b(self) -> float | None:
        return (self.both_flagged + self.b_only) / self.events if self.events else None

    @property
    def difference(self) -> float | None:
        """Flag rate of B minus flag rate of A."""
        if self.flag_rate_a is None or self.flag_rate_b is None:
            return None
        return self.flag_rate_b - self.flag_rate_a

    @property
    def kappa(self) -> float | None:
        return cohen_kappa(self.both_flagged, self.a_only, self.b_only, self.neither)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "neither": self.neither, "agreement": self.agreement,
            "flag_rate_a": self.flag_rate_a, "flag_rate_b": self.flag_rate_b,
            "difference": self.difference, "kappa": self.kappa,
        }  # fmt: skip


def pooled(rows: list[Agreement]) -> Agreement:
    """Every model version's table added up."""
    return Agreement(
        model="*",
        model_version="*",
        events=sum(r.events for r in rows),
        scored_by_both=sum(r.scored_by_both for r in rows),
        both_flagged=sum(r.both_flagged for r in rows),
        a_only=sum(r.a_only for r in rows),
        b_only=sum(r.b_only for r in rows),
    )


@dataclass(frozen=True)
class Disagreement:
    """An event the two versions judged differently."""

    model: str
    model_version: str
    request_id: str
    event_time_ms: int
    flagged_a: bool
    flagged_b: bool
    score_a: float
    score_b: float


@dataclass(frozen=True)
class VersionFindings:
    """What one table holds of one detector version."""

    detector_version: str
    table: str
    findings: int
    flagged: int


@dataclass(frozen=True)
class Comparison:
    detector: str
    version_a: str
    version_b: str
    by_model_version: list[Agreement]
    overall: Agreement
    examples: list[Disagreement]

    def as_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector, "version_a": self.version_a, "version_b": self.version_b,
            "overall": self.overall.as_dict(),
            "by_model_version": [row.as_dict() for row in self.by_model_version],
            "examples": [asdict(e) for e in self.examples],
        }  # fmt: skip


def stored_versions(client: Client, database: str, detector: str) -> list[VersionFindings]:
    """Every version of ``detector`` with findings, per table."""
    rows = client.query(VERSIONS_SQL, parameters={"db": database, "detector": detector}).result_rows
    found = [VersionFindings(str(v), str(t), int(n), int(f)) for v, t, n, f in rows]
    return sorted(found, key=lambda r: (r.detector_version, r.table))


def compare(
    client: Client,
    database: str,
    detector: str,
    version_a: str,
    version_b: str,
    *,
    since_ms: int = 0,
    model: str = "",
    examples: int = 5,
) -> Comparison:
    """Compare two stored versions of ``detector`` (see the module docstring).

    HistoryError when the versions are the same, or one has neither findings nor a backfill."""
    if version_a == version_b:
        raise HistoryError(f"--versions names {version_a!r} twice; compare two versions")
    if examples < 0:
        raise ValueError(f"examples must be >= 0, got {examples}")
    backfilled = [c for c in CheckpointStore(client, database).all(detector) if c.started]
    names = sorted(
        {v.detector_version for v in stored_versions(client, database, detector)}
        | {c.detector_version for c in backfilled}
    )
    missing = [v for v in (version_a, version_b) if v not in names]
    if missing:
        listed = ", ".join(names) or "none"
        raise HistoryError(
            f"no findings of {detector!r} version {', '.join(map(repr, missing))}; "
            f"stored versions: {listed}. Fix: backfill it first (llm-monitor backfill), or run "
            "it in shadow (detectors.shadow) until it has scored live traffic."
        )
    params: dict[str, Any] = {
        "db": database, "detector": detector, "a": version_a, "b": version_b,
        "since": since_ms, "model": model, "examples": examples,
    }  # fmt: skip
    rows = [
        Agreement(str(m), str(mv), int(n), int(both_scored), int(both), int(a), int(b))
        for m, mv, n, both_scored, both, a, b in client.query(
            SUMMARY_SQL, parameters=params
        ).result_rows
    ]
    found = []
    if examples:
        found = [
            Disagreement(
                str(m), str(mv), str(rid), int(t), bool(fa), bool(fb), float(sa), float(sb)
            )
            for m, mv, rid, t, fa, fb, sa, sb in client.query(
                EXAMPLES_SQL, parameters=params
            ).result_rows
        ]
    return Comparison(detector, version_a, version_b, rows, pooled(rows), found)
