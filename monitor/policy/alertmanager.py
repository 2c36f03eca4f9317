"""Incidents as Alertmanager alerts, pushed the moment the policy decides.

Prometheus alert rules see what the policy saw only after a scrape, an evaluation and the
route's ``group_wait``. The policy role also pushes each incident to Alertmanager's API
(``POST /api/v2/alerts``) as it opens, changes and resolves, so teams keep their routing,
silences and inhibitions and still hear within a second:

- one alert per incident: labels ``alertname=LLMMonitorIncident``, ``incident_id``,
  ``model``, ``deployment``, ``severity`` (``page`` for a rollback, ``critical`` for a kill,
  ``warning`` for a budget threshold)
  and ``rule`` (the rule that set that level), plus the configured static labels (``team``);
  annotations ``summary``, ``description`` (the evidence: each rule that fired or resolved,
  with observed value, bound, threshold and n), ``runbook_url`` and ``timeline``;
- while it fires, ``endsAt`` is four re-send intervals ahead and the role re-sends it every
  interval (as Prometheus does), so alerts of a worker that died expire instead of firing
  forever; once resolved, ``endsAt`` is the resolution time;
- an escalation changes ``severity`` and ``rule``, which are labels: the rollback-level alert
  is ended as the kill-level one starts (Alertmanager has one firing alert per incident).

Pushing never blocks or fails the policy: ``update`` records the newest state of each alert
and returns; one sender task per URL posts what is pending, retrying transport errors, 5xx,
408 and 429 with exponential backoff and full jitter (a retry carries the newest state of
each alert) for ``retry_deadline_s``, then gives up until the next change or re-send. Every
POST's outcome (delivered, retrying, gave_up) goes to ``on_outcome``: the worker counts them
in ``llm_monitor_alertmanager_pushes_total{outcome}``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from monitor.config import AlertmanagerSettings
from monitor.policy.grouping import level_entries
from monitor.policy.records import Incident, TimelineEntry

log = logging.getLogger(__name__)

ALERTNAME = "LLMMonitorIncident"
API_PATH = "/api/v2/alerts"
SEVERITY = {"rollback": "page", "kill": "critical", "budget": "warning"}
TTL_INTERVALS = 4  # a firing alert's endsAt, in re-send intervals ahead (Prometheus: 4)
RETRYABLE = frozenset({408, 429})
TIMELINE_LINES = 20
MAX_ANNOTATION_CHARS = 4000

Alert = dict[str, Any]
Identity = tuple[tuple[str, str], ...]
OnOutcome = Callable[[str], None]


def rfc3339(epoch_s: float) -> str:
    """``epoch_s`` as Alertmanager reads times: RFC 3339 in UTC, milliseconds."""
    stamp = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ANNOTATION_CHARS else text[: MAX_ANNOTATION_CHARS - 1] + "…"


def _line(entry: TimelineEntry) -> str:
    at = rfc3339(entry.at_ms / 1000)[11:23]
    version = f" ({entry.model_version})" if entry.model_version else ""
    rule = f" {entry.rule}" if entry.rule else ""
    return f"{at} {entry.kind}{rule}{version}"


def _subject(incident: Incident) -> str:
    """What the incident is about: the action and its target (a budget names its model)."""
    if not incident.deployment:
        return f"{incident.action} of {incident.model}"
    return f"{incident.action} of {incident.model} {incident.model_version} ({incident.deployment})"


def evidence(incident: Incident) -> str:
    """What the incident rests on: each rule's verdict as it fired (or resolved)."""
    head = _subject(incident)
    lines = [f"{head}, {incident.status}. Rules: {', '.join(incident.rules)}."]
    lines += [
        f"- {entry.kind}: {entry.detail}"
        for entry in incident.timeline
        if entry.detail and entry.kind not in ("resolved", "superseded")
    ]
    return _clip("\n".join(lines))


def incident_alerts(
    incident: Incident, settings: AlertmanagerSettings, now_s: float, *, end_previous: bool = True
) -> list[Alert]:
    """The alerts that show ``incident`` now: its current level firing until ``now_s`` plus
    four re-send intervals, or ended at its resolution; with ``end_previous``, an escalated
    incident also ends its rollback-level alert."""
    levels = level_entries(incident.timeline)
    rule = levels[-1].rule if levels else incident.rule
    starts = incident.opened_at_ms / 1000
    if incident.status == "open":
        ends = now_s + TTL_INTERVALS * settings.resend_interval_s
    else:
        ends = max(incident.resolved_at_ms / 1000, starts)
    annotations = {
        "summary": f"{_subject(incident)}: {rule}",
        "description": evidence(incident),
        "runbook_url": settings.runbook_url,
        "incident_id": incident.incident_id,
        "timeline": _clip("\n".join(_line(e) for e in incident.timeline[-TIMELINE_LINES:])),
    }
    current = _alert(incident, settings, incident.action, rule, annotations, starts, ends)
    alerts = [current]
    if end_previous and len(levels) > 1 and levels[0].action != incident.action:
        escalated_at = max(levels[-1].at_ms / 1000, starts)
        alerts.insert(0, _alert(incident, settings, levels[0].action, levels[0].rule,
                                annotations, starts, min(escalated_at, ends)))  # fmt: skip
    return alerts


def _alert(
    incident: Incident, settings: AlertmanagerSettings, action: str, rule: str,
    annotations: dict[str, str], starts: float, ends: float,
) -> Alert:  # fmt: skip
    labels = {
        **settings.labels,
        "alertname": ALERTNAME,
        "incident_id": incident.incident_id,
        "model": incident.model,
        "deployment": incident.deployment,
        "severity": SEVERITY.get(action, "page"),
        "rule": rule,
    }
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    }


def identity(alert: Alert) -> Identity:
    """What Alertmanager tells alerts apart by: the label set."""
    return tuple(sorted(alert["labels"].items()))


@dataclass
class _Target:
    """One Alertmanager: what waits to be posted to it, and its sender task."""

    url: str
    pending: dict[Identity, Alert] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class AlertmanagerPusher:
    """Pushes incidents to every configured Alertmanager without ever blocking the caller."""

    def __init__(
        self,
        settings: AlertmanagerSettings,
        *,
        on_outcome: OnOutcome | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.urls:
            raise ValueError("no Alertmanager URL configured (policy.alertmanager.urls)")
        self.settings = settings
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._client = client or httpx.AsyncClient(timeout=settings.timeout_s)
        self._clock = clock
        self._targets = [_Target(url) for url in settings.urls]
        self._escalations_ended: set[str] = set()
        self._busy = 0

    def update(self, incidents: Iterable[Incident]) -> None:
        """Queue the alerts that show ``incidents`` now and return (call it on the event
        loop: the sender tasks start on first use)."""
        now = self._clock()
        alerts: list[Alert] = []
        for incident in incidents:
            first = incident.incident_id not in self._escalations_ended
            shown = incident_alerts(incident, self.settings, now, end_previous=first)
            if len(shown) > 1:
                self._escalations_ended.add(incident.incident_id)
            alerts += shown
        if not alerts:
            return
        for target in self._targets:
            for alert in alerts:
                target.pending[identity(alert)] = alert
            target.wake.set()
            if target.task is None or target.task.done():
                target.task = asyncio.get_running_loop().create_task(self._send_loop(target))

    async def idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is pending or in flight (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._busy and not any(t.pending for t in self._targets):
                return True
            await asyncio.sleep(0.01)
        return False

    async def _send_loop(self, target: _Target) -> None:
        while True:
            await target.wake.wait()
            target.wake.clear()
            if not target.pending:
                continue
            self._busy += 1
            try:
                await self._push(target)
            except Exception:  # never let one bad push stop the sender
                log.exception("alertmanager %s: push failed", target.url)
                self._on_outcome("gave_up")
            finally:
                self._busy -= 1

    async def _push(self, target: _Target) -> None:
        """Post what is pending, retrying with backoff until the deadline; each retry takes
        the newest state of every alert."""
        s = self.settings
        deadline = time.monotonic() + s.retry_deadline_s
        batch: dict[Identity, Alert] = {}
        attempt = 0
        while True:
            batch.update(target.pending)
            target.pending.clear()
            attempt += 1
            status, error = 0, ""
            try:
                response = await self._client.post(
                    target.url + API_PATH,
                    content=msgspec.json.encode(list(batch.values())),
                    headers={"Content-Type": "application/json"},
                )
                status = response.status_code
                if status >= 300:
                    error = response.text[:300]
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            if 200 <= status < 300:
                self._on_outcome("delivered")
                return
            retryable = status == 0 or status >= 500 or status in RETRYABLE
            if not retryable or time.monotonic() >= deadline:
                self._on_outcome("gave_up")
                log.warning(
                    "alertmanager %s: gave up on %d alerts after %d attempts (HTTP %s): %s",
                    target.url, len(batch), attempt, status or "-", error,
                )  # fmt: skip
                return
            self._on_outcome("retrying")
            backoff = random.uniform(0, min(s.max_backoff_s, 0.1 * 2**attempt))  # noqa: S311
            await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        for target in self._targets:
            if target.task is not None:
                target.task.cancel()
        await self._client.aclose()
