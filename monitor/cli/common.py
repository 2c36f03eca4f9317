"""Shared pieces of the command line: consoles, settings, errors, common options."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from monitor.config import Settings, load_settings

console = Console()
err = Console(stderr=True)


DataDir = Annotated[Path | None, typer.Option(help="where chdb and logs live (default ./data)")]


def settings_for(data_dir: Path | None = None) -> Settings:
    """Settings from the environment and config file, ``--data-dir`` winning when given."""
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return load_settings(**overrides)


def fail(exc: Exception) -> NoReturn:
    """Print the error (it names the fix) and exit with status 2."""
    err.print(f"[red]error:[/] {exc}")
    raise typer.Exit(2)


def request_id_of(line: bytes) -> bytes:
    """The record key for a JSONL line: its request_id, or empty when it has none."""
    try:
        value = json.loads(line).get("request_id", "")
        return str(value).encode()
    except (ValueError, AttributeError, RecursionError):
        return b""


JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object last")]
ByField = Annotated[
    str | None,
    typer.Option("--by", help="also report per value of this field of each line (a category)"),
]


ModelDir = Annotated[
    Path | None, typer.Option(help="local embedding model directory (default: MiniLM)")
]


def print_report(report: dict[str, Any], as_json: bool, title: str) -> None:
    """A binary report: one JSON line (the last thing printed), or a table."""
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    by = report.get("by")
    overall = {k: v for k, v in report.items() if k != "by"}
    table = Table(title=title)
    table.add_column(by["field"] if by else "")
    for key in overall:
        table.add_column(key)
    table.add_row("all", *[str(v) for v in overall.values()])
    for group, scores in (by["groups"] if by else {}).items():
        table.add_row(group, *[str(scores.get(k, "")) for k in overall])
    console.print(table)


TokenEnv = Annotated[
    str, typer.Option(help="environment variable holding the API token (never printed)")
]
