"""Opening the store for a history command, and the table of versioned findings.

A chdb directory can be opened by one process at a time, and a running worker (or the demo)
holds it for as long as it runs. ClickHouse marks that with an exclusive ``flock`` on
``<dir>/status``, which also names the holder's PID: checked first, so the error names the
process and the fix instead of the engine's generic refusal.

Backfilled findings go to ``findings_versions`` (migration 0007): the same columns as
``findings`` with ``detector_version`` in the key, so versions never replace each other.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from clickhouse_connect.driver.client import Client

from monitor.config import Settings
from monitor.history.errors import HistoryError
from monitor.scoring.rows import FindingRow
from monitor.storage.client import connect
from monitor.storage.columns import columns_of
from monitor.storage.migrate import migrate
from monitor.storage.writer import table_rows

VERSIONS_TABLE: Final = "findings_versions"
_PID = re.compile(r"^PID:\s*(\d+)", re.MULTILINE)


def chdb_holder(path: Path) -> int | None:
    """The PID of another process that holds the chdb directory ``path`` open, else None.

    0 when it is held but the status file does not say by whom."""
    status = path / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None  # never opened, or closed cleanly (the engine removes it)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        match = _PID.search(status.read_text(errors="replace"))
        pid = int(match.group(1)) if match else 0
        return None if pid == os.getpid() else pid
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return None


def open_store(settings: Settings, *, writable: bool) -> Client:
    """A client on the configured store. ``writable``: the schema is brought up to date first
    (as the sink does on start), so ``findings_versions`` exists. HistoryError, naming the
    process, when another one holds the chdb directory."""
    dsn = settings.storage_dsn
    if dsn.startswith("chdb://"):
        directory = Path(dsn.removeprefix("chdb://"))
        pid = chdb_holder(directory)
        if pid is not None:
            who = f"process {pid}" if pid else "another process"
            raise HistoryError(
                f"{directory} is open in {who} (a running `llm-monitor worker` or demo?): a chdb "
                "directory can be opened by one process only. Fix: stop that process and rerun, "
                "or point LLM_MONITOR_STORAGE__DSN at a ClickHouse server both can reach."
            )
    client = connect(dsn)
    if writable:
        migrate(client, settings.storage)
    elif not versions_table_exists(client, settings.storage.database):
        raise HistoryError(
            f"{settings.storage.database}.{VERSIONS_TABLE} does not exist. "
            "Fix: run `llm-monitor migrate` (or a backfill) first."
        )
    return client


def versions_table_exists(client: Client, database: str) -> bool:
    rows = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": VERSIONS_TABLE},
    ).result_rows
    return bool(rows[0][0])


def write_versioned(client: Client, database: str, rows: Sequence[FindingRow]) -> int:
    """Insert findings into ``findings_versions`` (the columns of ``findings``)."""
    if rows:
        client.insert(
            f"{database}.{VERSIONS_TABLE}",
            table_rows(VERSIONS_TABLE, rows),
            column_names=list(columns_of(FindingRow).names),
        )
    return len(rows)
