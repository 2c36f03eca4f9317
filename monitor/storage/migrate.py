"""Apply numbered migrations once each, in order, recording them in ``schema_migrations``."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

from clickhouse_connect.driver.client import Client

from monitor.config import StorageSettings
from monitor.errors import StorageError
from monitor.storage import migrations


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    statements: tuple[str, ...]


def discover() -> list[Migration]:
    """Every ``mNNNN_name`` module under monitor/storage/migrations, by number."""
    found = []
    for info in pkgutil.iter_modules(migrations.__path__):
        if not info.name.startswith("m") or "_" not in info.name:
            continue
        number = int(info.name[1:5])
        module: ModuleType = importlib.import_module(f"{migrations.__name__}.{info.name}")
        found.append(Migration(number, info.name[6:], tuple(module.STATEMENTS)))
    found.sort(key=lambda m: m.number)
    numbers = [m.number for m in found]
    if len(set(numbers)) != len(numbers):
        raise StorageError(f"two migrations share a number: {numbers}")
    return found


def migrate(client: Client, storage: StorageSettings) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run on every start."""
    db = storage.database
    params = {
        "db": db,
        "text_ttl_days": storage.text_ttl_days,
        "metrics_ttl_days": storage.metrics_ttl_days,
    }
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        client.command(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(number UInt32, name String, applied_at DateTime DEFAULT now()) "
            "ENGINE = ReplacingMergeTree ORDER BY number"
        )
        done_rows = client.query(
            "SELECT number FROM {db:Identifier}.schema_migrations", parameters={"db": db}
        ).result_rows
        done = {row[0] for row in done_rows}
        applied = []
        for migration in discover():
            if migration.number in done:
                continue
            for statement in migration.statements:
                client.command(statement.format(**params))
            client.insert(
                f"{db}.schema_migrations",
                [[migration.number, migration.name]],
                column_names=["number", "name"],
            )
            applied.append(f"{migration.number:04d}_{migration.name}")
        return applied
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"migration failed: {exc}") from exc
