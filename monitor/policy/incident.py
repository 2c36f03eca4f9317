"""``llm-monitor incident report ID``: a markdown postmortem draft from the stored evidence.

Everything comes from ClickHouse: the incident (its latest revision: status, every rule that
fired in it, its timeline), the decisions of its deployment around it, every webhook attempt,
the kill-switch history, and the evidence copied at the time (events, flagged findings,
windows; copied again here if the worker stopped before it could). No raw PII: text columns
were redacted before they were stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from monitor.errors import MonitorError
from monitor.policy.records import Incident
from monitor.storage.writer import ClickHouseWriter

Row = tuple[Any, ...]

# The highest revision: each change of an incident is a new row version (migration 0006). Read
# from every stored row, not FINAL: right whatever parts are merged (0010 made merges keep it).
INCIDENT_SQL = (
    "SELECT incident_id, opened_at, action, rule, model, model_version, deployment, "
    "evidence_from, evidence_to, summary, status, rules, resolved_at, timeline "
    "FROM {db:Identifier}.incidents WHERE incident_id = {id:String} "
    "ORDER BY revision DESC LIMIT 1"
)
LATEST_SQL = (
    "SELECT incident_id FROM {db:Identifier}.incidents GROUP BY incident_id "
    "ORDER BY min(opened_at) DESC LIMIT 5"
)
EVIDENCE_KINDS_SQL = (
    "SELECT kind, count() FROM {db:Identifier}.incident_evidence FINAL "
    "WHERE incident_id = {id:String} GROUP BY kind"
)
# The report's tables by name. Parameters: the incident (``id``), its series (``model``,
# ``deployment``) and the start of its evidence window (``start``).
QUERIES = {
    "events": (
        "SELECT JSONExtractString(row, 'model_version') AS version, count(), "
        "countIf(JSONExtractString(row, 'status') IN ('error', 'timeout')), "
        "quantile(0.99)(JSONExtractFloat(row, 'latency_ms')) "
        "FROM {db:Identifier}.incident_evidence FINAL "
        "WHERE incident_id = {id:String} AND kind = 'event' GROUP BY version ORDER BY version"
    ),
    "findings": (
        "SELECT JSONExtractString(row, 'detector') AS detector, "
        "JSONExtractString(row, 'category') AS category, count(), "
        "groupArray(3)(JSONExtractString(row, 'request_id')) "
        "FROM {db:Identifier}.incident_evidence FINAL "
        "WHERE incident_id = {id:String} AND kind = 'finding' "
        "GROUP BY detector, category ORDER BY 3 DESC"
    ),
    "windows": (
        "SELECT JSONExtractString(row, 'model_version'), at, "
        "JSONExtractUInt(row, 'events'), JSONExtractFloat(row, 'error_rate'), "
        "JSONExtractRaw(row, 'flag_rates') FROM {db:Identifier}.incident_evidence FINAL "
        "WHERE incident_id = {id:String} AND kind = 'window' ORDER BY at"
    ),
    "decisions": (
        "SELECT decided_at, rule, outcome, model_version, observed, bound_low, threshold, n "
        "FROM {db:Identifier}.decisions FINAL WHERE incident_id = {id:String} OR ("
        "model = {model:String} AND deployment = {deployment:String} "
        "AND outcome NOT IN ('healthy', 'inconclusive') "
        "AND decided_at >= {start:DateTime64(3)}) ORDER BY decided_at LIMIT 100"
    ),
    "attempts": (
        "SELECT a.at, a.action, a.url, a.attempt, a.status_code, a.outcome, a.error "
        "FROM {db:Identifier}.actions AS a FINAL WHERE a.idempotency_key IN ("
        "SELECT idempotency_key FROM {db:Identifier}.decisions FINAL WHERE model = "
        "{model:String} AND deployment = {deployment:String} AND decided_at >= "
        "{start:DateTime64(3)}) OR a.idempotency_key IN (SELECT idempotency_key FROM "
        "{db:Identifier}.killswitch FINAL WHERE incident_id = {id:String}) ORDER BY a.at"
    ),
    "switches": (
        "SELECT changed_at, engaged, actor, reason FROM {db:Identifier}.killswitch FINAL "
        "WHERE model = {model:String} AND deployment = {deployment:String} ORDER BY changed_at"
    ),
}


def _rows(client: Client, sql: str, params: dict[str, Any]) -> list[Row]:
    return [tuple(r) for r in client.query(sql, parameters=params).result_rows]


def _ms(value: datetime) -> int:
    return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)


def _md_table(headers: list[str], rows: list[Row]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def incident_report(client: Client, database: str, incident_id: str) -> str:
    """The markdown draft for ``incident_id``: its summary, what the policy did, the evidence."""
    params: dict[str, Any] = {"db": database, "id": incident_id}
    found = _load(client, params)
    _ensure_evidence(client, database, params, found)
    _, _, _, _, model, _, deployment, start, end, *_ = found
    params.update(model=model, deployment=deployment, start=start, end=end)
    tables = {name: _rows(client, sql, params) for name, sql in QUERIES.items()}
    return "\n".join([
        *_summary(found), *_timeline(found[-1]), *_history(tables), *_evidence(tables),
        *_follow_ups(model, deployment),
    ])  # fmt: skip


def _load(client: Client, params: dict[str, Any]) -> Row:
    """The incident's row; an unknown id is an error that names the latest incidents."""
    found = _rows(client, INCIDENT_SQL, params)
    if not found:
        known = _rows(client, LATEST_SQL, params)
        raise MonitorError(
            f"no incident {params['id']!r}; latest: {', '.join(r[0] for r in known) or 'none'}"
        )
    return found[0]


def _ensure_evidence(client: Client, database: str, params: dict[str, Any], found: Row) -> None:
    """Copy the evidence now when the worker stopped before it could."""
    iid, opened, action, rule, model, version, deployment, start, end, summary, *_ = found
    incident = Incident(
        incident_id=iid, opened_at_ms=_ms(opened), action=action, rule=rule, model=model,
        model_version=version, deployment=deployment, evidence_from_ms=_ms(start),
        evidence_to_ms=_ms(end), summary=summary,
    )  # fmt: skip
    writer = ClickHouseWriter(client, database)
    if not _rows(client, EVIDENCE_KINDS_SQL, params):
        writer.copy_evidence(incident)


def _summary(found: Row) -> list[str]:
    iid, opened, action, rule, model, version, deployment, start, end, summary, *rest = found
    status, rules, resolved, _ = rest
    state = f"resolved at {resolved} UTC" if status == "resolved" else status or "open"
    return [
        f"# Incident {iid}: {action} of {model} {version} ({deployment})",
        "",
        "_Draft written by `llm-monitor incident report` from the stored evidence. Edit the "
        "sections in italics; the tables are facts._",
        "",
        "## Summary",
        "",
        f"- Opened: {opened} UTC by rule `{rule}`",
        f"- Action: **{action}** of `{model}` version `{version}` on `{deployment}`",
        f"- Status: {state}",
        f"- Rules that fired: {', '.join(f'`{r}`' for r in rules) or f'`{rule}`'}",
        f"- Why: {summary}",
        f"- Evidence window: {start} – {end} UTC",
        "",
        "_Impact: who was affected, for how long._",
        "",
    ]


def _timeline(entries: list[Any]) -> list[str]:
    """The incident's own timeline: opened, rules attached, escalation, resolutions."""
    rows: list[Row] = []
    for entry in entries:
        at_ms, kind, rule, version, action, key, detail = (
            tuple(entry.values()) if isinstance(entry, dict) else tuple(entry)
        )
        at = datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        rows.append((at, kind, rule, version, action, detail, key))
    return [
        "## Incident timeline",
        "",
        _md_table(
            ["at (UTC)", "what", "rule", "version", "action", "evidence", "idempotency key"], rows
        ),
    ]


def _history(tables: dict[str, list[Row]]) -> list[str]:
    """What the policy did: its decisions, every webhook attempt, the kill switch."""
    return [
        "## Policy decisions for this deployment",
        "",
        _md_table(
            ["decided at", "rule", "outcome", "version", "observed", "bound", "threshold", "n"],
            tables["decisions"],
        ),
        "## Actions (every webhook attempt)",
        "",
        _md_table(
            ["at", "action", "url", "attempt", "HTTP", "outcome", "error"], tables["attempts"]
        ),
        "## Kill switch",
        "",
        _md_table(["changed at", "engaged", "actor", "reason"], tables["switches"]),
    ]


def _evidence(tables: dict[str, list[Row]]) -> list[str]:
    """The evidence copied when the incident opened: events, findings, windows."""
    windows = [
        (v, at, n, rate, ", ".join(f"{k} {x:.3g}" for k, x in json.loads(raw or "{}").items()))
        for v, at, n, rate, raw in tables["windows"]
    ]
    return [
        "## Evidence",
        "",
        "Events in the window, by version:",
        "",
        _md_table(["version", "events", "errors+timeouts", "p99 latency ms"], tables["events"]),
        "Flagged findings (first request ids to look at):",
        "",
        _md_table(["detector", "category", "count", "examples"], tables["findings"]),
        "Windows:",
        "",
        _md_table(["version", "window start", "events", "error rate", "flag rates"], windows),
    ]


def _follow_ups(model: str, deployment: str) -> list[str]:
    return [
        "## Root cause",
        "",
        "_What changed in this version; why the detectors saw it._",
        "",
        "## Follow-ups",
        "",
        "- _Release the kill switch once fixed: `llm-monitor killswitch release "
        f"--model {model} --deployment {deployment} --reason ...`_",
        "- _Tune or add a policy rule if this was caught late or wrongly._",
        "",
    ]
