"""The schema for a ClickHouse cluster: Replicated tables per shard, Distributed in front.

Derived from the same numbered migrations as the single-node schema, so the two never drift:
every ``*MergeTree`` table becomes ``<name>_local`` with the ``Replicated*`` engine (ZooKeeper
path per shard, ``{replica}`` macro) plus a ``Distributed`` table under the original name,
sharded so that rows ReplacingMergeTree must collapse (same request, same series) land on the
same shard — ``FINAL`` then works per shard. Materialized views read and write the local
tables; plain views read the distributed ones. Every statement carries ``ON CLUSTER``.

A migration that rebuilds a table (0010: create a copy, ``ATTACH PARTITION ... FROM`` the old
one, ``EXCHANGE``, drop) does it on the local tables, shard by shard; the Distributed table in
front reads the local one by name, so it reads the new table after the exchange. A table such a
migration creates and exchanges gets ``{uuid}`` in its ZooKeeper path: after the exchange it
lives on under the old name, so the migration run again creates its copy under a fresh path.
``llm-monitor deploy clickhouse-cluster`` writes deploy/clickhouse/cluster/schema.sql.
"""

from __future__ import annotations

import re
from pathlib import Path

from monitor.storage.migrate import discover

SHARDING = {
    "events": "cityHash64(request_id)",
    "findings": "cityHash64(request_id)",
    "findings_versions": "cityHash64(request_id)",
    "backfills": "cityHash64(detector, detector_version, model)",
    "incident_evidence": "cityHash64(incident_id)",
    "incidents": "cityHash64(incident_id)",
    "incidents_m0010": "cityHash64(incident_id)",
    "actions": "cityHash64(idempotency_key)",
    "decisions": "cityHash64(model, deployment)",
    "killswitch": "cityHash64(model, deployment)",
    "dead_letters": "cityHash64(topic, partition, offset)",
    "audit_log": "cityHash64(at, path, remote)",
}
DEFAULT_SHARDING = "cityHash64(model, model_version, deployment)"
CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+) \(", re.IGNORECASE)
ENGINE = re.compile(r"ENGINE = (\w*)MergeTree(\(([^)]*)\))?")
ALTER = re.compile(r"ALTER TABLE \{db\}\.(\w+)")
# Distributed tables refuse TTLs and hold no parts.
STORAGE_ONLY = re.compile(r"\bMODIFY (COLUMN \w+ )?TTL\b|\bPARTITION\b")
PARTITION_FROM = re.compile(r"\bFROM \{db\}\.(\w+)")
DROP_TABLE = re.compile(r"DROP TABLE IF EXISTS \{db\}\.(\w+)( SYNC)?$")
EXCHANGE = re.compile(r"EXCHANGE TABLES \{db\}\.(\w+) AND \{db\}\.(\w+)$")


def _replicated(statement: str, table: str, *, unique_path: bool = False) -> str:
    def engine(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(3)
        uuid = "/{uuid}" if unique_path else ""
        path = f"'/clickhouse/tables/{{shard}}/{{database}}/{table}_local{uuid}', '{{replica}}'"
        return f"ENGINE = Replicated{kind}MergeTree({path}{', ' + args if args else ''})"

    return ENGINE.sub(engine, statement, count=1)


def cluster_statements(cluster: str, database: str = "llm_monitor") -> list[str]:
    """Every migration's statements, in order, rewritten for ``cluster``."""
    on = f"ON CLUSTER {cluster}"
    local_tables: set[str] = set()
    out: list[str] = []
    for migration in discover():
        statements = [" ".join(raw.split()) for raw in migration.statements]
        exchanged = {t for s in statements if (m := EXCHANGE.match(s)) for t in m.groups()}
        for statement in statements:
            create = CREATE_TABLE.search(statement)
            drop = DROP_TABLE.match(statement)
            exchange = EXCHANGE.match(statement)
            if statement.startswith("CREATE DATABASE"):
                out.append(f"{statement} {on}")
            elif create:
                table = create.group(1)
                local_tables.add(table)
                local = statement.replace(f"{{db}}.{table} (", f"{{db}}.{table}_local {on} (", 1)
                out.append(_replicated(local, table, unique_path=table in exchanged))
                shard = SHARDING.get(table, DEFAULT_SHARDING)
                out.append(
                    f"CREATE TABLE IF NOT EXISTS {{db}}.{table} {on} AS {{db}}.{table}_local "
                    f"ENGINE = Distributed({cluster}, {database}, {table}_local, {shard})"
                )
            elif drop:  # the Distributed table, then the local one under it
                table, sync = drop.group(1), drop.group(2) or ""
                for name in (table, f"{table}_local"):
                    out.append(f"DROP TABLE IF EXISTS {{db}}.{name} {on}{sync}")
            elif exchange:  # the local tables: each Distributed one reads its own by name
                a, b = exchange.groups()
                out.append(f"EXCHANGE TABLES {{db}}.{a}_local AND {{db}}.{b}_local {on}")
            elif ALTER.match(statement):
                table = ALTER.match(statement).group(1)  # type: ignore[union-attr]
                local = statement.replace(f"{{db}}.{table}", f"{{db}}.{table}_local {on}", 1)
                if "PARTITION" in statement:  # parts come from the other local table
                    local = PARTITION_FROM.sub(r"FROM {db}.\1_local", local)
                out.append(local)
                if not STORAGE_ONLY.search(statement):
                    out.append(statement.replace(f"{{db}}.{table}", f"{{db}}.{table} {on}", 1))
            elif statement.startswith("CREATE MATERIALIZED VIEW"):
                for table in local_tables:  # a view sees the inserts of its own shard
                    statement = re.sub(rf"\{{db\}}\.{table}\b", f"{{db}}.{table}_local", statement)
                name = statement.split()[6]  # CREATE MATERIALIZED VIEW IF NOT EXISTS <name>
                out.append(statement.replace(f"{name} TO", f"{name} {on} TO", 1))
            elif statement.startswith("CREATE VIEW"):
                name = statement.split()[5]  # CREATE VIEW IF NOT EXISTS <name>
                out.append(statement.replace(f"{name} AS", f"{name} {on} AS", 1))
            else:
                raise ValueError(
                    f"migration {migration.number}: no cluster form for {statement[:60]}"
                )
    return out


def render(cluster: str, database: str = "llm_monitor", ttl: tuple[int, int] = (30, 400)) -> str:
    text_ttl, metrics_ttl = ttl
    statements = [
        s.replace("{db}", database)
        .replace("{text_ttl_days}", str(text_ttl))
        .replace("{metrics_ttl_days}", str(metrics_ttl))
        for s in cluster_statements(cluster, database)
    ]
    header = (
        f"-- llm-monitor schema for ClickHouse cluster '{cluster}' (Replicated + Distributed).\n"
        "-- Rendered by `llm-monitor deploy clickhouse-cluster` from the migrations; "
        "do not edit.\n-- Needs macros {shard} and {replica} and the cluster in remote_servers "
        "(remote-servers.xml).\n\n"
    )
    return header + ";\n\n".join(statements) + ";\n"


def write(deploy_dir: Path, cluster: str) -> Path:
    path = deploy_dir / "clickhouse" / "cluster" / "schema.sql"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(cluster))
    return path
