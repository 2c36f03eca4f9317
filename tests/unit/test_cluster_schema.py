"""The cluster schema's form of a table rebuild (migration 0010): on the local tables, shard by
shard, the Distributed table in front untouched. ClickHouse's parser reads the rendered file in
tests/integration/test_deploy.py."""

from __future__ import annotations

from monitor.storage.cluster import cluster_statements

ON = "ON CLUSTER c"


def rebuild() -> list[str]:
    """The rendered statements from the first one that names the incidents copy."""
    statements = cluster_statements("c")
    first = next(i for i, s in enumerate(statements) if "incidents_m0010" in s)
    return statements[first:]


def test_the_incidents_rebuild_runs_on_the_local_tables() -> None:
    drop_dist, drop_local, create_local, create_dist, attach, exchange, *drops = rebuild()
    assert drop_dist == f"DROP TABLE IF EXISTS {{db}}.incidents_m0010 {ON} SYNC"
    assert drop_local == f"DROP TABLE IF EXISTS {{db}}.incidents_m0010_local {ON} SYNC"
    assert create_local.startswith(
        f"CREATE TABLE IF NOT EXISTS {{db}}.incidents_m0010_local {ON} ("
    )
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/"
        "incidents_m0010_local/{uuid}', '{replica}', revision) ORDER BY incident_id"
    ) in create_local
    assert create_dist == (
        f"CREATE TABLE IF NOT EXISTS {{db}}.incidents_m0010 {ON} AS {{db}}.incidents_m0010_local "
        "ENGINE = Distributed(c, llm_monitor, incidents_m0010_local, cityHash64(incident_id))"
    )
    assert attach == (
        f"ALTER TABLE {{db}}.incidents_m0010_local {ON} ATTACH PARTITION ID 'all' "
        "FROM {db}.incidents_local"
    )
    assert (
        exchange == f"EXCHANGE TABLES {{db}}.incidents_local AND {{db}}.incidents_m0010_local {ON}"
    )
    assert drops == [drop_dist, drop_local]


def test_tables_no_migration_exchanges_keep_their_fixed_path() -> None:
    creates = [s for s in cluster_statements("c") if "_local ON CLUSTER c (" in s]
    unique = [s for s in creates if "{uuid}" in s]
    assert len(unique) == 1 and "incidents_m0010_local" in unique[0]
    incidents = next(s for s in creates if "{db}.incidents_local " in s)
    assert "'/clickhouse/tables/{shard}/{database}/incidents_local', '{replica}')" in incidents
