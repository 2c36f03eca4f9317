"""Every query a dashboard runs, in a form a real backend can execute.

Grafana fills in template variables and macros before a query reaches Prometheus or
ClickHouse; the query-proving test (and anyone debugging a panel) needs the same expansion:

- PromQL: ``$model``-style variables become ``.*`` (the "All" value), ``$__rate_interval`` and
  ``$__interval`` a fixed range; a ``label_values(metric, label)`` variable query becomes
  ``group by (label) (metric)``;
- ClickHouse (grafana-clickhouse-datasource macros): ``$__timeFilter(col)``,
  ``$__timeFilter_ms(col)``, ``$__timeInterval(col)``, ``$__fromTime``, ``$__toTime``,
  ``$__interval_s``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dashboards.clickhouse import PLUGIN

LABEL_VALUES = re.compile(r"^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    kind: str  # promql | clickhouse
    text: str


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []  # collapsed rows


def panel_queries(name: str, board: dict[str, Any]) -> list[PanelQuery]:
    """Every target of every panel, and every query variable."""
    out = []
    for panel in _panels(board):
        for target in panel.get("targets") or []:
            source = (target.get("datasource") or panel.get("datasource") or {}).get("type")
            if source == PLUGIN:
                out.append(PanelQuery(name, panel["title"], "clickhouse", target["rawSql"]))
            elif "expr" in target:
                out.append(PanelQuery(name, panel["title"], "promql", target["expr"]))
    for variable in (board.get("templating") or {}).get("list") or []:
        query = variable.get("query")
        if isinstance(query, str) and query:
            out.append(PanelQuery(name, f"variable {variable['name']}", "promql", query))
    return out


def expand_promql(expr: str, interval: str = "1m") -> str:
    match = LABEL_VALUES.match(expr.strip())
    if match:
        return f"group by ({match.group(2)}) ({match.group(1)})"
    expr = expr.replace("$__rate_interval", interval).replace("$__interval", interval)
    expr = expr.replace("$__range", interval)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def _dt(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def expand_clickhouse(sql: str, start: datetime, end: datetime, interval_s: int = 60) -> str:
    """The SQL the ClickHouse plugin would send for this time range and interval."""
    since, until = (
        f"toDateTime64('{_dt(start)}', 3, 'UTC')",
        f"toDateTime64('{_dt(end)}', 3, 'UTC')",
    )
    sql = re.sub(r"\$__timeFilter_ms\(([^)]+)\)", rf"\1 >= {since} AND \1 <= {until}", sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 >= {since} AND \1 <= {until}", sql)
    sql = re.sub(
        r"\$__timeInterval\(([^)]+)\)",
        rf"toStartOfInterval(toDateTime(\1), INTERVAL {interval_s} second)",
        sql,
    )
    return (
        sql.replace("$__fromTime", since)
        .replace("$__toTime", until)
        .replace("$__interval_s", str(interval_s))
    )
