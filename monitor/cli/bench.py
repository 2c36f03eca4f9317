"""``llm-monitor bench``: benchmarks that need the command line (the rest are in bench/)."""

from __future__ import annotations

from typing import Annotated

import typer

from monitor.cli.common import JsonFlag

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (also under bench/).")


@bench_app.command("reaction")
def bench_reaction(
    incidents: Annotated[int, typer.Option(min=1)] = 50,
    spacing_s: Annotated[float, typer.Option(help="seconds between incident starts")] = 1.0,
    settle_s: Annotated[float, typer.Option(help="wait for the slowest path")] = 75.0,
    as_json: JsonFlag = False,
) -> None:
    """Policy engine vs Prometheus + Alertmanager reaction time on the same incidents."""
    from bench.reaction import main as reaction

    args = ["--incidents", str(incidents), "--spacing-s", str(spacing_s)]
    reaction([*args, "--settle-s", str(settle_s), *(["--json"] if as_json else [])])
