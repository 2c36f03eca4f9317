"""Every query proven: the pipeline with seeded traffic, a real Prometheus scraping the worker,
every PromQL expression of every dashboard and alert rule through Prometheus's HTTP API, every
ClickHouse panel (macros expanded) and every cookbook query against the chdb it filled. The
worker runs the judge role against a loopback OpenAI-compatible judge, so the canary
dashboard's judge panels (win rate, prompts compared, promotion gate) have series too."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml

from dashboards.build import build_all
from dashboards.queries import expand_clickhouse, expand_promql, panel_queries
from monitor.client import produce
from monitor.devtools.broker import free_port
from monitor.devtools.generate import generate_events
from monitor.judge.loopback import LoopbackJudge
from monitor.policy.receiver import Receiver
from monitor.policy.signing import Verifier
from monitor.storage.client import connect
from tests.conftest import WorkerHarness, poll, wait_until
from tests.e2e.test_pipeline_e2e import stored
from tests.e2e.test_semantic_e2e import SEMANTIC

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/llm-monitor.rules.yml"
SECRET = "dash-webhook-secret-0123456789abcdef"  # noqa: S105 - test fixture
METRIC = re.compile(r"\b(llm_monitor_[a-z_]+|up)\b(?!\s*\()")


@pytest.fixture
def prometheus(workers: WorkerHarness, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found. Fix: ./.ci/ensure-tools (or `make test`)")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "llm-monitor", "static_configs": [
            {"targets": [f"127.0.0.1:{workers.port}"]}]}],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - the Debian binary, our arguments
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def promql(url: str, expr: str) -> list[object]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert response["status"] == "success", f"{expr}: {response}"
    result: list[object] = response["data"]["result"]
    return result


def cookbook() -> list[str]:
    text = (ROOT / "docs/queries.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL)


def test_every_dashboard_alert_and_cookbook_query_runs(
    workers: WorkerHarness, prometheus: str, tmp_path: Path
) -> None:
    receiver = Receiver(Verifier(SECRET.encode()))
    base = receiver.serve()
    judge = LoopbackJudge("dashboards-judge", first_bias=1.0)
    judge.start_in_thread()
    workers.use_policy({"cooldown_s": 0, "webhooks": {
        name: [f"{base}/{name}"] for name in ("rollback", "kill", "resume")}}, secret=SECRET)  # fmt: skip
    workers.env_overrides.update({
        **SEMANTIC, "LLM_MONITOR_PIPELINE__WINDOW_S": "60",
        "LLM_MONITOR_DETECTORS__DRIFT__REFERENCE_EVENTS": "50",
        # This test proves queries, not detection: a loose alpha makes sure drift rows exist.
        "LLM_MONITOR_DETECTORS__DRIFT__ALPHA": "0.3",
        "LLM_MONITOR_DETECTORS__DRIFT__MIN_WINDOW_EVENTS": "10",
        # The judge's pairwise windows close within the run (a minute, no lateness).
        "LLM_MONITOR_JUDGE__ENABLED": "true", "LLM_MONITOR_JUDGE__ENDPOINT": judge.base_url,
        "LLM_MONITOR_JUDGE__MODEL": "loopback-judge", "LLM_MONITOR_JUDGE__WINDOW_S": "60",
        "LLM_MONITOR_JUDGE__LATENESS_S": "0", "LLM_MONITOR_JUDGE__RESAMPLES": "500",
    })  # fmt: skip
    records = list(generate_events(6000, seed=12, bad_fraction=0.01))
    workers.start()
    try:
        asyncio.run(produce(workers.bootstrap, "llm.events", records))
        workers.wait_for(lambda: stored(workers) >= 5900, timeout_s=240, what="5900 events stored")
        workers.wait_for(
            lambda: workers.metric("llm_monitor_embed_batch_events_sum") >= stored(workers),
            timeout_s=240,
            what="every stored event through the embed role",
        )
        for metric in ("llm_monitor_drift_signals_total", "llm_monitor_promotion_gate"):
            wait_until(
                partial(promql, prometheus, metric),
                f"Prometheus to scrape {metric}",
                timeout_s=120,
                interval_s=1.0,
            )
        # one refused kill-switch call, so the audit log has a row (no token: API disabled)
        assert httpx.get(f"http://127.0.0.1:{workers.port}/killswitch").status_code == 503
        refused = 'llm_monitor_killswitch_api_calls_total{outcome="disabled"}'
        # rate() and increase() need two samples: of every series, and of that call's count.
        wait_until(
            lambda: not short_series(prometheus) and samples_at_least(prometheus, refused, 1) >= 2,
            "two samples of every llm_monitor series in Prometheus, the refused call counted",
            timeout_s=60,
            interval_s=1.0,
            detail=lambda: f"fewer than two samples: {short_series(prometheus)}",
        )

        queries = [q for name, board in build_all().items() for q in panel_queries(name, board)]
        prom_queries = [q for q in queries if q.kind == "promql"]
        assert len(prom_queries) >= 30
        # A counter needs two scrapes before increase() answers: poll each query a while.
        empty = [f"{q.dashboard} / {q.panel}: {q.text}" for q in prom_queries
                 if not eventually(prometheus, expand_promql(q.text), 30)]  # fmt: skip
        assert empty == [], "dashboard queries without series:\n" + "\n".join(empty)

        rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        missing = []
        for rule in rules:
            promql(prometheus, rule["expr"])  # parses and evaluates
            for metric in set(METRIC.findall(rule["expr"])):
                if not promql(prometheus, f'count({{__name__="{metric}"}})'):
                    missing.append(f"{rule['alert']}: {metric}")
        assert missing == [], "alert rules reading series that do not exist:\n" + "\n".join(missing)
        expected = {"LLMMonitorKillSwitchEngaged", "LLMMonitorPIILeak"}
        poll(lambda: expected <= alerts(prometheus), 30, interval_s=1.0)
        assert expected <= alerts(prometheus)
    finally:
        workers.stop_all()
        receiver.stop()
        judge.stop_thread()

    client = connect(f"chdb://{workers.data_dir / 'chdb'}")
    now = datetime.now(UTC)
    start, end = now - timedelta(days=1), now + timedelta(hours=1)
    no_rows = []
    for q in (q for q in queries if q.kind == "clickhouse"):
        if not client.query(expand_clickhouse(q.text, start, end)).result_rows:
            no_rows.append(f"{q.panel}: {q.text}")
    assert no_rows == [], "ClickHouse panels without rows:\n" + "\n".join(no_rows)
    blocks = cookbook()
    assert len(blocks) >= 12
    no_rows = [sql for sql in blocks if not client.query(sql).result_rows]
    assert no_rows == [], "cookbook queries without rows:\n" + "\n\n".join(no_rows)
    runbook = re.findall(r"`(SELECT [^`]+)`", (ROOT / "docs/operations.md").read_text())
    assert len(runbook) >= 8
    for sql in runbook:  # the runbook's first checks run (some are empty on healthy data)
        client.query(sql.replace("'M'", "'support-bot'"))


def eventually(prometheus: str, expr: str, timeout_s: float) -> list[object]:
    """The query's result once it has one, or its empty result after ``timeout_s``."""
    return poll(lambda: promql(prometheus, expr), timeout_s, interval_s=1.0)


def alerts(prometheus: str) -> set[str]:
    """The names of the alerts Prometheus reports (pending or firing)."""
    response = httpx.get(f"{prometheus}/api/v1/alerts", timeout=30).json()
    return {a["labels"]["alertname"] for a in response["data"]["alerts"]}


def raw_samples(prometheus: str, selector: str, range_s: int = 60) -> list[dict[str, Any]]:
    """Each series ``selector`` picks with its raw samples over the last ``range_s``."""
    return cast(list[dict[str, Any]], promql(prometheus, f"{selector}[{range_s}s]"))


def short_series(prometheus: str) -> list[str]:
    """The llm_monitor series with fewer than two samples in the last minute."""
    series = raw_samples(prometheus, '{__name__=~"llm_monitor_.+"}')
    return [str(s["metric"]) for s in series if len(s["values"]) < 2]


def samples_at_least(prometheus: str, selector: str, value: float) -> int:
    """How many samples of the series ``selector`` picks, in the last minute, are >= value."""
    series = raw_samples(prometheus, selector)
    return sum(1 for s in series for _, v in s["values"] if float(v) >= value)
