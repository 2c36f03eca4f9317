"""Dashboards: committed JSON equals the code built from the committed policy, threshold lines
follow the policy, decodes into Grafana's typed schema (the SDK's models), references only
provisioned datasources; query expansion for the proving test."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards.build import OUT, build_all
from dashboards.queries import expand_clickhouse, expand_promql, panel_queries
from monitor.policy.config import Policy, load_policy

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "deploy/policy/policy.yaml"


def test_committed_json_is_what_the_code_builds_from_the_committed_policy() -> None:
    built = build_all(load_policy(POLICY))
    assert sorted(p.stem for p in OUT.glob("*.json")) == sorted(built)
    for name, board in built.items():
        assert json.loads((OUT / f"{name}.json").read_text()) == board, (
            f"dashboards/json/{name}.json is stale: run `llm-monitor dashboards build`"
        )


def red_line(board: dict[str, Any], title: str) -> tuple[float, str]:
    """The threshold a panel draws, and its unit."""
    panel = next(p for p in board["panels"] if p["title"] == title)
    defaults = panel["fieldConfig"]["defaults"]
    steps = [s for s in defaults["thresholds"]["steps"] if s["color"] == "red"]
    assert len(steps) == 1, title
    return steps[0]["value"], defaults["unit"]


def test_threshold_lines_follow_the_policy() -> None:
    default = build_all(load_policy(POLICY))
    assert red_line(default["sre-overview"], "Error rate (latest window)") == (0.05, "percentunit")
    assert red_line(default["sre-overview"], "Latency p50 / p95 / p99 per version") == (5.0, "s")
    policy = Policy.model_validate({"rollback": {
        "error_rate": {"threshold": 0.10}, "p99_latency": {"threshold_ms": 2000},
        "detector_rates": {"toxicity": {"threshold": 0.03}},
        "bias_disparity": {"threshold": 0.08}, "judge_win_rate": {"threshold": 0.40},
    }})  # fmt: skip
    built = build_all(policy)
    sre, canary = built["sre-overview"], built["canary-vs-stable"]
    assert red_line(sre, "Error rate (latest window)") == (0.10, "percentunit")
    assert red_line(sre, "Latency p50 / p95 / p99 per version") == (2.0, "s")
    assert red_line(built["detectors"], "Bias disparity with its 95 % bounds")[0] == 0.08
    assert red_line(canary, "Error rate") == (0.10, "percentunit")
    assert red_line(canary, "p99 latency") == (2.0, "s")  # the rule gauge, in seconds
    assert red_line(canary, "Toxicity rate")[0] == 0.03
    judge = "LLM judge: canary win rate against stable, with its interval"
    assert red_line(default["canary-vs-stable"], judge) == (0.45, "percentunit")
    assert red_line(canary, judge) == (0.40, "percentunit")
    # hallucination has no rate rule by default: its panel is the canary-minus-stable rule
    compared = "Hallucination rate: canary minus stable"
    assert red_line(default["canary-vs-stable"], compared) == (0.02, "percentunit")
    neither = build_all(Policy.model_validate({"rollback": {
        "canary_vs_stable": {"rates": ["error_rate"]}}}))["canary-vs-stable"]  # fmt: skip
    no_rule = next(p for p in neither["panels"] if p["title"] == "Hallucination rate")
    assert "thresholds" not in no_rule["fieldConfig"]["defaults"]  # no rule at all: no line
    off = build_all(Policy.model_validate({"rollback": {
        "detector_rates": {"hallucination": {"threshold": 0.5, "enabled": False}},
        "canary_vs_stable": {"enabled": False}}}))["canary-vs-stable"]  # fmt: skip
    assert any(p["title"] == "Hallucination rate" and "thresholds" not in p["fieldConfig"]["defaults"]
               for p in off["panels"])  # disabled rules draw no line  # fmt: skip


def subset(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where ``ours`` is not contained in ``theirs`` (theirs may add defaults)."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [path]
        return [p for k, v in ours.items() for p in subset(v, theirs.get(k), f"{path}.{k}")]
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [path]
        return [
            p
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            for p in subset(a, b, f"{path}[{i}]")
        ]
    return [] if ours == theirs else [path]


def test_dashboards_decode_into_the_sdk_schema_without_loss() -> None:
    register_default_plugins()
    for name, board in build_all().items():
        again = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
        assert subset(board, again) == [], name


def test_panels_use_provisioned_datasources() -> None:
    provisioned = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/llm-monitor.yml").read_text()
    )
    uids = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    for board in build_all().values():
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            ref = panel["datasource"]
            assert uids.get(ref["uid"]) == ref["type"], panel["title"]


def test_every_panel_has_a_query() -> None:
    for name, board in build_all().items():
        titled = {q.panel for q in panel_queries(name, board)}
        panels = {p["title"] for p in board["panels"] if p["type"] != "row"}
        assert panels <= titled, panels - titled


def test_query_expansion() -> None:
    assert expand_promql('rate(x{model=~"$model"}[$__rate_interval])') == 'rate(x{model=~".*"}[1m])'
    assert expand_promql("label_values(llm_monitor_window_events, model)") == (
        "group by (model) (llm_monitor_window_events)"
    )
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    sql = expand_clickhouse("SELECT $__timeInterval(t) FROM x WHERE $__timeFilter(t)", start, end)
    assert sql == (
        "SELECT toStartOfInterval(toDateTime(t), INTERVAL 60 second) FROM x WHERE "
        "t >= toDateTime64('2026-01-01 00:00:00.000', 3, 'UTC') AND "
        "t <= toDateTime64('2026-01-02 00:00:00.000', 3, 'UTC')"
    )


def test_push_creates_the_folder_and_overwrites_each_dashboard() -> None:
    """Against a loopback stand-in for Grafana's HTTP API (no Grafana installs here): the
    requests grafana-client sends, with the bearer token."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dashboards.push import push_all

    calls: list[tuple[str, str, str | None, Any]] = []

    class Grafana(BaseHTTPRequestHandler):
        def _reply(self, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            calls.append(("GET", self.path, self.headers.get("Authorization"), None))
            self._reply([])

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(("POST", self.path, self.headers.get("Authorization"), body))
            if self.path.startswith("/api/folders"):
                self._reply({"uid": "f1", "title": body["title"]})
            else:
                self._reply({"uid": body["dashboard"]["uid"], "version": 1, "status": "success"})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Grafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pushed = push_all(f"http://127.0.0.1:{server.server_address[1]}", "tok-123", "LLM")
    finally:
        server.shutdown()
    assert sorted(uid for uid, _ in pushed) == sorted(b["uid"] for b in build_all().values())
    posts = [c for c in calls if c[0] == "POST" and c[1].startswith("/api/dashboards/db")]
    assert len(posts) == 4
    assert all(c[2] == "Bearer tok-123" for c in calls)
    assert all(c[3]["overwrite"] and c[3]["folderUid"] == "f1" for c in posts)
