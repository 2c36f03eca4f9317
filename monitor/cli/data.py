"""The monitor's ClickHouse from the command line: schema migrations and SQL."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from monitor.cli.common import DataDir, console, fail, settings_for
from monitor.errors import MonitorError


def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the ClickHouse schema (idempotent)."""
    from monitor.storage.client import connect
    from monitor.storage.migrate import migrate as run_migrations

    try:
        settings = settings_for(data_dir)
        applied = run_migrations(connect(settings.storage_dsn), settings.storage)
        console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    except MonitorError as exc:
        fail(exc)


def query(
    sql: Annotated[str, typer.Argument(help="SQL; tables live in database llm_monitor")],
    data_dir: DataDir = None,
    format: Annotated[str, typer.Option(help="table or json")] = "table",
) -> None:
    """Run SQL against the monitor's ClickHouse (chdb under --data-dir, or the configured DSN)."""
    from monitor.storage.client import connect

    if format not in ("table", "json"):
        fail(MonitorError(f"--format must be table or json, got {format!r}"))
    try:
        settings = settings_for(data_dir)
        result = connect(settings.storage_dsn).query(sql)
    except MonitorError as exc:
        fail(exc)
        return
    except Exception as exc:  # the server's own message is the useful part
        fail(MonitorError(str(exc).strip().splitlines()[0]))
        return
    names = list(result.column_names)
    if format == "json":
        rows = [dict(zip(names, row, strict=True)) for row in result.result_rows]
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    table = Table()
    for name in names:
        table.add_column(name)
    for row in result.result_rows:
        table.add_row(*[str(v) for v in row])
    console.print(table)
