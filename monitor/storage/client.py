"""Open a clickhouse-connect client from a DSN: ``chdb:///path`` (embedded) or ``http(s)://``.

The same SQL runs either way. Only one process may open a chdb path at a time; the sink owns it.
"""

from __future__ import annotations

from pathlib import Path

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from monitor.errors import StorageError


def connect(dsn: str) -> Client:
    """A client for ``dsn``; chdb directories are created on first use."""
    if dsn.startswith("chdb://"):
        path = dsn.removeprefix("chdb://")
        if path:
            Path(path).mkdir(parents=True, exist_ok=True)
    try:
        return clickhouse_connect.get_client(dsn=dsn)
    except Exception as exc:
        raise StorageError(
            f"cannot open ClickHouse at {redact_dsn(dsn)}: {exc}. "
            "Fix: check LLM_MONITOR_STORAGE__DSN; a chdb path can be opened by one process only."
        ) from exc


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, safe for logs."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
