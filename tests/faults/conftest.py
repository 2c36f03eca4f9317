"""Fixtures of the fault suite; the figures of every case are repeated at the end of the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.devtools.broker import BundledBroker
from tests.faults.support import FIGURES, MODE, Cluster


@pytest.fixture
def cluster(broker: BundledBroker, tmp_path: Path) -> Iterator[Cluster]:
    """Worker processes of one pipeline against the test's broker, stopped afterwards."""
    running = Cluster(broker.bootstrap, tmp_path / "workers")
    try:
        yield running
    finally:
        running.stop_all()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section(f"fault figures ({MODE} run)")
    for figure in FIGURES:
        terminalreporter.write_line(json.dumps(figure, default=str))
