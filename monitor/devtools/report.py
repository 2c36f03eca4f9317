"""The demo's closing summary, read back from ClickHouse: what an SRE would ask first."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from monitor.config import Settings
from monitor.policy.receiver import Receiver
from monitor.storage.client import connect

console = Console(width=140)

EXAMPLE_QUERIES = (
    (
        "p99 latency and error rate per version, per minute",
        "SELECT model_version, deployment, window_start, events, error_rate, latency_p99_ms "
        "FROM llm_monitor.windows FINAL ORDER BY window_start, model_version",
    ),
    (
        "PII leaks by type (no raw values are stored)",
        "SELECT arrayJoin(splitByChar(',', details['leaked_types'])) AS type, count() AS leaks "
        "FROM llm_monitor.findings FINAL WHERE detector = 'pii' AND category = 'leak' "
        "GROUP BY type ORDER BY leaks DESC",
    ),
    (
        "dead letters by reason",
        "SELECT reason, count() AS n, any(error) AS example "
        "FROM llm_monitor.dead_letters FINAL GROUP BY reason ORDER BY n DESC",
    ),
)


# The summary's plain tables, in the order printed: (title, columns, SQL).
SUMMARY_TABLES: tuple[tuple[str, list[str], str], ...] = (
    (
        "Dead letters by reason",
        ["reason", "count"],
        "SELECT reason, count() FROM {db:Identifier}.dead_letters FINAL "
        "GROUP BY reason ORDER BY 2 DESC",
    ),
    (
        "Flags per detector",
        ["detector", "category", "flagged", "events"],
        "SELECT detector, category, countIf(flagged), count() "
        "FROM {db:Identifier}.findings FINAL "
        "GROUP BY detector, category ORDER BY detector, 3 DESC",
    ),
    (
        "Per version",
        ["model", "version", "deployment", "events", "error rate", "p50 ms", "p99 ms",
         "pii leaks"],
        "SELECT e.model, e.model_version, e.deployment, count(), "
        "countIf(e.status IN ('error', 'timeout')) / count(), "
        "quantile(0.5)(e.latency_ms), quantile(0.99)(e.latency_ms), "
        "countIf(e.request_id IN (SELECT request_id FROM {db:Identifier}.findings FINAL "
        "WHERE detector = 'pii' AND category = 'leak')) "
        "FROM {db:Identifier}.events AS e FINAL GROUP BY 1, 2, 3 ORDER BY 1, 3 DESC",
    ),
    (
        "Worst windows (p99 latency / error rate, from the streaming aggregator)",
        ["model", "version", "window start", "events", "error rate", "p99 ms"],
        "SELECT model, model_version, window_start, events, error_rate, latency_p99_ms "
        "FROM {db:Identifier}.windows FINAL ORDER BY greatest(error_rate * 10000, "
        "ifNull(latency_p99_ms, 0)) DESC LIMIT 5",
    ),
    (
        "Semantic detectors per version (flagged events)",
        ["model", "version", "deployment", "toxicity", "hallucination", "injection", "drift"],
        "SELECT model, model_version, deployment, "
        "countIf(detector = 'toxicity' AND flagged), "
        "countIf(detector = 'hallucination' AND flagged), "
        "countIf(detector = 'injection' AND flagged), "
        "countIf(detector = 'drift' AND flagged) "
        "FROM {db:Identifier}.findings FINAL GROUP BY 1, 2, 3 ORDER BY 1, 3 DESC",
    ),
    (
        "Largest bias disparities (max − min across groups, 95 % bounds, final windows)",
        ["model", "version", "window start", "metric", "disparity", "low", "high"],
        "SELECT model, model_version, window_start, metric, bias_disparity[metric], "
        "bias_low[metric], bias_high[metric] FROM {db:Identifier}.windows FINAL "
        "ARRAY JOIN mapKeys(bias_disparity) AS metric WHERE is_final "
        "ORDER BY bias_low[metric] DESC LIMIT 5",
    ),
)  # fmt: skip

Rows = Callable[[str], list[Any]]


def _rows(settings: Settings) -> Rows:
    """A query function on the demo's database: SQL with ``{db:Identifier}`` in, rows out."""
    client = connect(settings.storage_dsn)
    db = settings.storage.database

    def rows(sql: str) -> list[Any]:
        return list(client.query(sql, parameters={"db": db}).result_rows)

    return rows


def _table(title: str, columns: list[str], rows: list[Any]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_summary(settings: Settings, metrics: dict[str, float], sent: int, seconds: float) -> None:
    """Totals, the summary tables, then where the data is and queries to try on it."""
    rows = _rows(settings)
    _print_totals(rows, sent, seconds)
    for title, columns, sql in SUMMARY_TABLES:
        console.print(_table(title, columns, rows(sql)))
    _print_data(settings, metrics)


def _print_totals(rows: Rows, sent: int, seconds: float) -> None:
    events = rows("SELECT count() FROM {db:Identifier}.events FINAL")[0][0]
    dead = rows("SELECT count() FROM {db:Identifier}.dead_letters FINAL")[0][0]
    console.print(
        f"\n[bold]{sent}[/] records in → [bold]{events}[/] events stored, "
        f"[bold]{dead}[/] dead letters ({seconds:.1f}s, {sent / max(seconds, 1e-9):,.0f} rec/s)"
    )


def _print_data(settings: Settings, metrics: dict[str, float]) -> None:
    e2e = metrics.get("llm_monitor_end_to_end_seconds_count{}", 0.0)
    console.print(
        f"end-to-end latency samples: {e2e:.0f} (histogram llm_monitor_end_to_end_seconds)"
    )
    console.print(
        f"\n[bold]Data[/]: {settings.storage_dsn}  (tables events, findings, windows, dead_letters)"
    )
    console.print("Try:")
    for title, sql in EXAMPLE_QUERIES:
        console.print(f'  # {title}\n  llm-monitor query "{sql}" --data-dir {settings.data_dir}')


NotificationKey = tuple[str, str, str, str, str, str, str]


def alertmanager_notifications(receiver: Receiver) -> list[tuple[Any, ...]]:
    """The alerts in the Alertmanager notifications ``receiver`` got, one row per alert and
    status: incident, model, deployment, severity, rule, status, notifications carrying it,
    first arrival (UTC); in order of first arrival. Alerts other than the pushed incidents
    show their alertname in the incident column."""
    seen: dict[NotificationKey, list[float]] = {}
    for at, _, payload in list(receiver.alerts):
        alerts = payload.get("alerts")
        for alert in alerts if isinstance(alerts, list) else []:
            if not isinstance(alert, dict):
                continue
            labels = alert.get("labels")
            if not isinstance(labels, dict):
                labels = {}
            name = str(labels.get("alertname", ""))
            incident = str(labels.get("incident_id") or name)
            key = (
                incident,
                str(labels.get("model", "")),
                str(labels.get("deployment", "")),
                str(labels.get("severity", "")),
                str(labels.get("rule", "")),
                str(alert.get("status", "")),
                name,
            )
            seen.setdefault(key, []).append(at)
    rows = sorted(seen.items(), key=lambda item: min(item[1]))
    return [
        (*key[:6], len(times), datetime.fromtimestamp(min(times), UTC).strftime("%H:%M:%S.%f")[:12])
        for key, times in rows
    ]


def _print_alertmanager(receiver: Receiver, alertmanager: str | None) -> None:
    if alertmanager is None:
        console.print("Alertmanager: not run in this demo (see the warning at the start)")
        return
    statuses = [str(p.get("status", "")) for _, _, p in list(receiver.alerts)]
    console.print(
        f"Alertmanager {alertmanager} sent {len(statuses)} notifications to the receiver's "
        f"/alertmanager ({statuses.count('firing')} firing, {statuses.count('resolved')} "
        "resolved)"
    )
    rows = alertmanager_notifications(receiver)
    if rows:
        console.print(
            _table(
                "Alertmanager notifications (incidents pushed by the policy role)",
                ["incident", "model", "deployment", "severity", "rule", "status",
                 "notifications", "first (UTC)"],
                rows,
            )
        )  # fmt: skip


def print_actions(settings: Settings, receiver: Receiver, alertmanager: str | None = None) -> None:
    """What the policy did: acting decisions, webhook deliveries (signed, and the
    notifications of ``alertmanager``, the URL of the one the demo ran, if any), kill
    switches, incidents."""
    rows = _rows(settings)
    console.print(
        _table(
            "Policy decisions that acted (and the ones held back)",
            ["rule", "outcome", "model", "version", "deployment", "observed", "bound", "n"],
            rows(
                "SELECT rule, outcome, model, model_version, deployment, observed, bound_low, n "
                "FROM {db:Identifier}.decisions FINAL WHERE action != 'none' AND outcome IN "
                "('fire', 'attached', 'suppressed', 'cooldown', 'dry_run') "
                "ORDER BY decided_at LIMIT 30"
            ),
        )
    )
    console.print(
        _table(
            "Webhook deliveries (table actions)",
            ["action", "idempotency key", "attempts", "outcome", "status"],
            rows(
                "SELECT action, idempotency_key, max(attempt), argMax(outcome, attempt), "
                "argMax(status_code, attempt) FROM {db:Identifier}.actions FINAL "
                "GROUP BY action, idempotency_key ORDER BY min(at)"
            ),
        )
    )
    verified = ", ".join(f"{d.event} {d.body.get('model')}/{d.body.get('deployment')}"
                         for d in receiver.deliveries)  # fmt: skip
    console.print(
        f"receiver verified {len(receiver.deliveries)} signed deliveries ({verified or 'none'}); "
        f"refused {len(receiver.refused)}"
    )
    _print_alertmanager(receiver, alertmanager)
    console.print(
        _table(
            "Kill switches",
            ["model", "deployment", "engaged", "actor", "incident", "reason"],
            rows(
                "SELECT model, deployment, argMax(engaged, changed_at), argMax(actor, changed_at), "
                "argMax(incident_id, changed_at), argMax(reason, changed_at) "
                "FROM {db:Identifier}.killswitch FINAL GROUP BY model, deployment"
            ),
        )
    )
    # Each change to an incident is a new revision of its row: read the newest of each.
    incidents = rows(
        "SELECT incident_id, argMax(action, revision), argMax(status, revision), "
        "argMax(length(rules), revision), argMin(rule, revision), model, deployment "
        "FROM {db:Identifier}.incidents GROUP BY incident_id, model, deployment "
        "ORDER BY min(opened_at)"
    )
    console.print(_table(
        "Incidents (one per deployment episode)",
        ["incident", "action", "status", "rules", "opened by", "model", "deployment"], incidents,
    ))  # fmt: skip
    if incidents:
        console.print(
            f"  llm-monitor incident report {incidents[-1][0]} --data-dir {settings.data_dir}"
        )


def print_judge(settings: Settings) -> None:
    """The LLM judge's grades per model version, and its canary-vs-stable win rates with their
    bootstrap intervals (nothing when the judge did not run)."""
    rows = _rows(settings)
    grades = rows(
        "SELECT model, model_version, deployment, count(), round(avgIf(grade, NOT parse_error), "
        "2), countIf(parse_error), any(judge_model) FROM {db:Identifier}.v_judge_grades "
        "GROUP BY model, model_version, deployment ORDER BY model, model_version, deployment"
    )
    if not grades:
        return
    console.print(_table(
        "LLM judge: grades (1-5) of a sample of events",
        ["model", "version", "deployment", "graded", "mean grade", "parse errors", "judge"],
        grades,
    ))  # fmt: skip
    console.print(_table(
        "LLM judge: canary vs stable, positions swapped (win rate, 95 % paired bootstrap)",
        ["model", "canary", "window", "pairs", "wins/ties/losses", "win rate", "interval",
         "gate"],
        rows(
            "SELECT model, canary_version, window_start, pairs, "
            "concat(toString(wins), '/', toString(ties), '/', toString(losses)), "
            "round(win_rate, 3), concat('[', toString(round(win_rate_low, 3)), ', ', "
            "toString(round(win_rate_high, 3)), ']'), gate "
            "FROM {db:Identifier}.v_judge_pairwise_windows ORDER BY model, window_start"
        ),
    ))  # fmt: skip
    _print_judge_policy(rows)


# The policy's decisions on the judge's windows, read on the win-rate side: the gate's are
# (observed = win rate), the rollback rule's are on the loss side (1 - win rate).
JUDGE_DECISIONS = (
    "SELECT rule, outcome, model, model_version, window_start, n, "
    "if(rule = 'gate.judge_win_rate', observed, 1 - observed) AS win_rate, "
    "if(rule = 'gate.judge_win_rate', bound_low, 1 - bound_high) AS low, "
    "if(rule = 'gate.judge_win_rate', bound_high, 1 - bound_low) AS high, incident_id "
    "FROM {db:Identifier}.decisions FINAL "
    "WHERE rule IN ('gate.judge_win_rate', 'rollback.judge_win_rate') "
    "ORDER BY model, model_version, window_start, decided_at, rule"
)


def _print_judge_policy(rows: Rows) -> None:
    """The promotion gate of each canary version and ``rollback.judge_win_rate``, as the
    policy decided them on the judge's windows (each verdict change), then a one-line
    summary: every version's newest gate, and whether the rule rolled anything back."""
    decisions = rows(JUDGE_DECISIONS)
    console.print(_table(
        "Policy on the LLM judge: promotion gate and rollback.judge_win_rate (verdict changes)",
        ["rule", "outcome", "model", "canary", "window", "pairs", "win rate", "interval",
         "incident"],
        [(rule, outcome, model, version, start, n, round(rate, 3),
          f"[{low:.3f}, {high:.3f}]", incident)
         for rule, outcome, model, version, start, n, rate, low, high, incident in decisions],
    ))  # fmt: skip
    newest: dict[tuple[str, str], str] = {}
    verdict: dict[tuple[str, str], str] = {}  # the newest pass or fail
    fired = []
    for rule, outcome, model, version, *_ in decisions:  # in window order
        if rule == "gate.judge_win_rate":
            newest[(model, version)] = outcome
            if outcome != "inconclusive":
                verdict[(model, version)] = outcome
        elif outcome in ("fire", "attached", "suppressed", "dry_run"):
            fired.append(f"{model}/{version} ({outcome})")
    gates = []
    for (model, version), gate in newest.items():
        last = verdict.get((model, version))
        held = f" (last verdict: {last})" if gate == "inconclusive" and last else ""
        gates.append(f"{model}/{version} {gate}{held}")
    shown = ", ".join(gates) or "no window decided yet"
    console.print(
        f"promotion gate (newest window): {shown}; rollback.judge_win_rate fired: "
        f"{', '.join(fired) or 'no (no canary surely worse per the judge)'}"
    )
