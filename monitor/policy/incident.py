"""``llm-monitor incident report ID``: a markdown postmortem draft from the stored evidence.

Everything comes from ClickHouse: the incident, the decisions of its series around it, every
webhook attempt, the kill-switch history, and the evidence copied at the time (events,
flagged findings, windows; copied again here if the worker stopped before it could). No raw
PII: text columns were redacted before they were stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from monitor.errors import MonitorError
from monitor.policy.records import Incident
from monitor.storage.writer import ClickHouseWriter


def _rows(client: Client, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, parameters=params).result_rows]


def _ms(value: datetime) -> int:
    return int(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)


def _md_table(headers: list[str], rows: list[tuple[Any, ...]]) -> str:
    if not rows:
        return "_none_\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def incident_report(client: Client, database: str, incident_id: str) -> str:
    params: dict[str, Any] = {"db": database, "id": incident_id}
    found = _rows(
        client,
        "SELECT incident_id, opened_at, action, rule, model, model_version, deployment, "
        "evidence_from, evidence_to, summary FROM {db:Identifier}.incidents FINAL "
        "WHERE incident_id = {id:String}",
        params,
    )
    if not found:
        known = _rows(client, "SELECT incident_id FROM {db:Identifier}.incidents FINAL "
                      "ORDER BY opened_at DESC LIMIT 5", params)  # fmt: skip
        raise MonitorError(
            f"no incident {incident_id!r}; latest: {', '.join(r[0] for r in known) or 'none'}"
        )
    iid, opened, action, rule, model, version, deployment, start, end, summary = found[0]
    incident = Incident(
        incident_id=iid, opened_at_ms=_ms(opened), action=action, rule=rule, model=model,
        model_version=version, deployment=deployment, evidence_from_ms=_ms(start),
        evidence_to_ms=_ms(end), summary=summary,
    )  # fmt: skip
    writer = ClickHouseWriter(client, database)
    evidence = _rows(
        client,
        "SELECT kind, count() FROM {db:Identifier}.incident_evidence FINAL "
        "WHERE incident_id = {id:String} GROUP BY kind",
        params,
    )
    if not evidence:
        writer.copy_evidence(incident)
    params.update(model=model, deployment=deployment, start=start, end=end)
    events = _rows(
        client,
        "SELECT JSONExtractString(row, 'model_version') AS version, count(), "
        "countIf(JSONExtractString(row, 'status') IN ('error', 'timeout')), "
        "quantile(0.99)(JSONExtractFloat(row, 'latency_ms')) "
        "FROM {db:Identifier}.incident_evidence FINAL "
        "WHERE incident_id = {id:String} AND kind = 'event' GROUP BY version ORDER BY version",
        params,
    )
    findings = _rows(
        client,
        "SELECT JSONExtractString(row, 'detector') AS detector, "
        "JSONExtractString(row, 'category') AS category, count(), "
        "groupArray(3)(JSONExtractString(row, 'request_id')) "
        "FROM {db:Identifier}.incident_evidence FINAL "
        "WHERE incident_id = {id:String} AND kind = 'finding' "
        "GROUP BY detector, category ORDER BY 3 DESC",
        params,
    )
    windows = _rows(
        client,
        "SELECT JSONExtractString(row, 'model_version'), at, "
        "JSONExtractUInt(row, 'events'), JSONExtractFloat(row, 'error_rate'), "
        "JSONExtractRaw(row, 'flag_rates') FROM {db:Identifier}.incident_evidence FINAL "
        "WHERE incident_id = {id:String} AND kind = 'window' ORDER BY at",
        params,
    )
    decisions = _rows(
        client,
        "SELECT decided_at, rule, outcome, model_version, observed, bound_low, threshold, n "
        "FROM {db:Identifier}.decisions FINAL WHERE model = {model:String} "
        "AND deployment = {deployment:String} AND outcome NOT IN ('healthy', 'inconclusive') "
        "AND decided_at >= {start:DateTime64(3)} ORDER BY decided_at LIMIT 50",
        params,
    )
    attempts = _rows(
        client,
        "SELECT a.at, a.action, a.url, a.attempt, a.status_code, a.outcome, a.error "
        "FROM {db:Identifier}.actions AS a FINAL WHERE a.idempotency_key IN ("
        "SELECT idempotency_key FROM {db:Identifier}.decisions FINAL WHERE model = "
        "{model:String} AND deployment = {deployment:String} AND decided_at >= "
        "{start:DateTime64(3)}) OR a.idempotency_key IN (SELECT idempotency_key FROM "
        "{db:Identifier}.killswitch FINAL WHERE incident_id = {id:String}) ORDER BY a.at",
        params,
    )
    switches = _rows(
        client,
        "SELECT changed_at, engaged, actor, reason FROM {db:Identifier}.killswitch FINAL "
        "WHERE model = {model:String} AND deployment = {deployment:String} ORDER BY changed_at",
        params,
    )
    flag_rates = [(v, at, n, rate, json.loads(raw or "{}")) for v, at, n, rate, raw in windows]
    return "\n".join([
        f"# Incident {iid}: {action} of {model} {version} ({deployment})",
        "",
        "_Draft written by `llm-monitor incident report` from the stored evidence. Edit the "
        "sections in italics; the tables are facts._",
        "",
        "## Summary",
        "",
        f"- Opened: {opened} UTC by rule `{rule}`",
        f"- Action: **{action}** of `{model}` version `{version}` on `{deployment}`",
        f"- Why: {summary}",
        f"- Evidence window: {start} – {end} UTC",
        "",
        "_Impact: who was affected, for how long._",
        "",
        "## Timeline (policy decisions for this deployment)",
        "",
        _md_table(["decided at", "rule", "outcome", "version", "observed", "bound", "threshold",
                   "n"], decisions),  # fmt: skip
        "## Actions (every webhook attempt)",
        "",
        _md_table(["at", "action", "url", "attempt", "HTTP", "outcome", "error"], attempts),
        "## Kill switch",
        "",
        _md_table(["changed at", "engaged", "actor", "reason"], switches),
        "## Evidence",
        "",
        "Events in the window, by version:",
        "",
        _md_table(["version", "events", "errors+timeouts", "p99 latency ms"], events),
        "Flagged findings (first request ids to look at):",
        "",
        _md_table(["detector", "category", "count", "examples"], findings),
        "Windows:",
        "",
        _md_table(["version", "window start", "events", "error rate", "flag rates"],
                  [(v, at, n, rate, ", ".join(f"{k} {x:.3g}" for k, x in fr.items()))
                   for v, at, n, rate, fr in flag_rates]),  # fmt: skip
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
    ])  # fmt: skip
