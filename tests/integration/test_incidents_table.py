"""``incidents`` keeps each incident's newest revision (migration 0010), on the real engine.

Before 0010 the table was a ReplacingMergeTree without a version column: a merge kept the row
inserted last, so a revision stored out of order replaced a newer one. 0010 rebuilds it as
``ReplacingMergeTree(revision)``, keeps every row it held, and can run again from any step an
earlier attempt stopped at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from monitor.config import StorageSettings
from monitor.policy.incident import INCIDENT_SQL
from monitor.policy.records import Incident, PolicyRecords
from monitor.storage import migrate as migrate_module
from monitor.storage.client import connect
from monitor.storage.migrate import Migration, discover, migrate
from monitor.storage.writer import ClickHouseWriter

pytestmark = pytest.mark.integration

T0 = 1_795_514_400_000
REBUILD = 10


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    opened = connect(f"chdb://{tmp_path / 'chdb'}")
    yield opened
    opened.close()


def incident(incident_id: str, revision: int, status: str = "open") -> Incident:
    return Incident(
        incident_id=incident_id, opened_at_ms=T0, action="rollback", rule="error_rate",
        model="m", model_version="v2", deployment="canary", evidence_from_ms=T0 - 60_000,
        evidence_to_ms=T0 + revision, summary=f"revision {revision}", status=status,
        revision=revision, updated_at_ms=T0 + revision,
    )  # fmt: skip


def store(client: Client, storage: StorageSettings, *rows: Incident) -> None:
    """Each row in its own insert (its own part), in the order given."""
    writer = ClickHouseWriter(client, storage.database)
    for row in rows:
        writer.write_policy([PolicyRecords(incidents=[row])])


def migrate_before_rebuild(
    client: Client, storage: StorageSettings, monkeypatch: pytest.MonkeyPatch
) -> Migration:
    """Apply every migration before 0010, as a database of the previous release has them."""
    everything = discover()
    earlier = [m for m in everything if m.number < REBUILD]
    with monkeypatch.context() as patch:
        patch.setattr(migrate_module, "discover", lambda: earlier)
        migrate(client, storage)
    (rebuild,) = [m for m in everything if m.number == REBUILD]
    return rebuild


def rows(client: Client, storage: StorageSettings, final: str = "") -> list[tuple[str, int]]:
    sql = f"SELECT incident_id, revision FROM {storage.database}.incidents {final} ORDER BY 1, 2"  # noqa: S608
    return [(str(i), int(r)) for i, r in client.query(sql).result_rows]


def tables(client: Client, storage: StorageSettings) -> dict[str, str]:
    found = client.query(
        "SELECT name, engine_full FROM system.tables "
        "WHERE database = {db:String} AND startsWith(name, 'incidents')",
        parameters={"db": storage.database},
    ).result_rows
    return {str(name): str(engine) for name, engine in found}


def test_the_newest_revision_survives_a_merge_after_the_rebuild(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = StorageSettings()
    migrate_before_rebuild(client, storage, monkeypatch)
    # Revisions stored out of order, as a retried policy batch can store them.
    store(client, storage, incident("a", 2, "resolved"), incident("a", 1), incident("b", 1))
    # The bug: without a version column, the row inserted last wins.
    assert rows(client, storage, "FINAL") == [("a", 1), ("b", 1)]

    assert migrate(client, storage) == ["0010_incidents_revision"]
    assert rows(client, storage) == [("a", 1), ("a", 2), ("b", 1)]  # every row kept
    assert tables(client, storage)["incidents"].startswith("ReplacingMergeTree(revision)")
    assert set(tables(client, storage)) == {"incidents"}  # the old table is gone

    store(client, storage, incident("b", 3, "resolved"), incident("b", 2))  # after, too
    client.command(f"OPTIMIZE TABLE {storage.database}.incidents FINAL")
    assert rows(client, storage) == [("a", 2), ("b", 3)]

    summaries = client.query(
        f"SELECT incident_id, summary FROM {storage.database}.v_incidents ORDER BY 1"  # noqa: S608
    ).result_rows
    assert summaries == [("a", "revision 2"), ("b", "revision 3")]
    report = client.query(INCIDENT_SQL, parameters={"db": storage.database, "id": "b"})
    assert report.result_rows[0][10] == "resolved"  # status, as the postmortem reads it


@pytest.mark.parametrize("stopped_after", [1, 2, 3, 4, 5])
def test_the_rebuild_runs_again_from_any_step_it_stopped_at(
    client: Client, monkeypatch: pytest.MonkeyPatch, stopped_after: int
) -> None:
    storage = StorageSettings(database=f"stopped_after_{stopped_after}")
    rebuild = migrate_before_rebuild(client, storage, monkeypatch)
    store(client, storage, incident("a", 2), incident("a", 1), incident("b", 1))
    for statement in rebuild.statements[:stopped_after]:  # then the worker died
        client.command(statement.format(db=storage.database))

    assert migrate(client, storage) == ["0010_incidents_revision"]  # it was never recorded
    assert rows(client, storage) == [("a", 1), ("a", 2), ("b", 1)]
    assert set(tables(client, storage)) == {"incidents"}
    assert tables(client, storage)["incidents"].startswith("ReplacingMergeTree(revision)")
    client.command(f"OPTIMIZE TABLE {storage.database}.incidents FINAL")
    assert rows(client, storage) == [("a", 2), ("b", 1)]
