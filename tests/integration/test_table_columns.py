"""Row structs are the one declaration of each ClickHouse table the writer inserts into.

The migrated tables (chdb) must have exactly the columns derived from the structs, and one row
of each type must insert and read back. Without ClickHouse: every struct field is a column or
marked as not one, timestamps are marked, and the annotations leave the wire format alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect as mi
import pytest

from detectors.base import Span
from detectors.pii import PiiScanner
from monitor.config import StorageSettings
from monitor.history.storage import write_versioned
from monitor.ingest.dlq import DeadLetter, DeadLetterRow
from monitor.policy.records import (
    ActionAttempt,
    AuditEntry,
    Decision,
    Incident,
    KillSwitchState,
    PolicyRecords,
)
from monitor.scoring.rows import EventRow, FindingRow
from monitor.storage.client import connect
from monitor.storage.columns import EPOCH_MS, NOT_COLUMN, EpochMs, columns_of
from monitor.storage.migrate import migrate
from monitor.storage.writer import TABLES, ClickHouseWriter
from monitor.windows.stats import WindowStats

S = TypeVar("S", bound=msgspec.Struct)
DB = "llm_monitor"
T0 = 1_795_514_400_000


def sample(row_type: type[S]) -> S:
    """A row with a distinct, non-default value in every field, so swapped columns show."""
    counter = itertools.count(1)
    value = _value(mi.type_info(row_type), "row", counter)
    assert isinstance(value, row_type)
    return value


def _value(t: mi.Type, name: str, n: Iterator[int]) -> Any:
    """A value of type ``t`` for field ``name``; ``*_ms`` ints are recent epoch ms (TTLs)."""
    if isinstance(t, mi.Metadata):
        return _value(t.type, name, n)
    if isinstance(t, mi.StructType):
        return t.cls(**{f.name: _value(f.type, f.name, n) for f in t.fields})
    if isinstance(t, mi.UnionType):
        return _value(next(u for u in t.types if not isinstance(u, mi.NoneType)), name, n)
    if isinstance(t, mi.ListType):
        return [_value(t.item_type, name, n)]
    if isinstance(t, mi.VarTupleType):
        return (_value(t.item_type, name, n),)
    if isinstance(t, mi.DictType):
        return {f"{name}-key": _value(t.value_type, name, n)}
    simple: dict[type[mi.Type], Callable[[], Any]] = {
        mi.StrType: lambda: f"{name}-{next(n)}",
        mi.BoolType: lambda: True,
        mi.IntType: lambda: (T0 + next(n) * 1000) if name.endswith("_ms") else 1000 + next(n),
        mi.FloatType: lambda: next(n) + 0.5,
        mi.BytesType: lambda: bytes([0xFF, next(n) % 256]),
    }
    return simple[type(t)]()


def _leaf_fields(t: mi.StructType, prefix: str = "") -> Iterator[tuple[str, mi.Type]]:
    """Every field path of a struct, nested structs flattened."""
    for f in t.fields:
        inner = f.type.type if isinstance(f.type, mi.Metadata) else f.type
        if isinstance(inner, mi.StructType):
            yield from _leaf_fields(inner, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f.type


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_field_is_a_column_or_marked_as_not_one(table: str) -> None:
    row_type = TABLES[table]
    columns = columns_of(row_type)
    info = mi.type_info(row_type)
    assert isinstance(info, mi.StructType)
    expected = []
    for path, field_type in _leaf_fields(info):
        name = path.rsplit(".", 1)[-1]
        extra = field_type.extra if isinstance(field_type, mi.Metadata) else None
        if extra == NOT_COLUMN.extra:
            assert path in columns.not_columns
            continue
        if extra == EPOCH_MS.extra:
            expected.append(name.removesuffix("_ms"))
            continue
        # An epoch timestamp without the EpochMs mark would go in as a plain int column.
        assert not (name.endswith("_ms") and isinstance(field_type, mi.IntType)), path
        expected.append(name)
    assert columns.names == tuple(expected)
    assert len(set(columns.names)) == len(columns.names)
    assert columns_of(row_type) is columns  # derived once per type


class _Inner(msgspec.Struct):
    a: int
    spans: tuple[Span, ...]


class _Row(msgspec.Struct, kw_only=True):
    inner: _Inner
    at_ms: EpochMs
    cache: Annotated[str, NOT_COLUMN] = ""
    flag: bool


def test_nested_structs_flatten_and_not_columns_are_left_out() -> None:
    columns = columns_of(_Row)
    assert columns.names == ("a", "spans", "at", "flag")
    assert columns.not_columns == ("cache",)
    row = _Row(inner=_Inner(1, (Span(0, 3, "EMAIL", "prompt"),)), at_ms=T0, cache="x", flag=True)
    assert list(columns.values(row)) == [1, [(0, 3, "EMAIL", "prompt")], T0, True]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_column_annotations_leave_the_wire_format_alone(table: str) -> None:
    row_type = TABLES[table]
    row = sample(row_type)
    plain = msgspec.to_builtins(row, builtin_types=(bytes,))  # field names, no metadata
    for encoder, decoder in ((msgspec.json, msgspec.json), (msgspec.msgpack, msgspec.msgpack)):
        encoded = encoder.encode(row)
        assert encoded == encoder.encode(plain)
        assert decoder.decode(encoded, type=row_type) == row
    assert "clickhouse" not in msgspec.json.encode(msgspec.json.schema(row_type)).decode()


def _table_columns(client: Any, table: str) -> list[tuple[str, str, str]]:
    rows = client.query(
        "SELECT name, type, default_kind FROM system.columns "
        "WHERE database = {db:String} AND table = {table:String} ORDER BY position",
        parameters={"db": DB, "table": table},
    ).result_rows
    return [(str(name), str(kind_type), str(kind)) for name, kind_type, kind in rows]


def _read_back(client: Any, table: str, names: tuple[str, ...], types: dict[str, str]) -> list[Any]:
    """The one row of ``table``: DateTime64 as epoch ms, strings as bytes where written so."""
    exprs = [
        f"toUnixTimestamp64Milli(`{c}`)" if types[c].startswith("DateTime64") else f"`{c}`"
        for c in names
    ]
    rows = client.query(
        f"SELECT {', '.join(exprs)} FROM {{db:Identifier}}.{{table:Identifier}}",  # noqa: S608
        parameters={"db": DB, "table": table},
        column_formats={c: "bytes" for c in names if types[c] == "String"},
    ).result_rows
    assert len(rows) == 1
    # A named Tuple reads back as a dict; compare it as the tuple that was written.
    return [
        [tuple(item.values()) for item in value]
        if isinstance(value, list) and value and isinstance(value[0], dict)
        else value
        for value in rows[0]
    ]


def _written(value: Any) -> Any:
    """A value as read back from a String column (bytes): text encoded, everything else as is."""
    return value.encode() if isinstance(value, str) else value


@pytest.mark.integration
def test_tables_have_exactly_the_derived_columns_and_rows_round_trip(tmp_path: Path) -> None:
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    try:
        migrate(client, StorageSettings())
        writer = ClickHouseWriter(client, DB)
        event, finding, window = sample(EventRow), sample(FindingRow), sample(WindowStats)
        letter = sample(DeadLetter)
        policy = PolicyRecords(
            decisions=[sample(Decision)], attempts=[sample(ActionAttempt)],
            killswitch=[sample(KillSwitchState)], audit=[sample(AuditEntry)],
            incidents=[sample(Incident)],
        )  # fmt: skip
        assert writer.write_events([event]) == 1
        assert writer.write_findings([finding]) == 1
        assert write_versioned(client, DB, [finding]) == 1  # backfills and shadows
        assert writer.write_windows([window]) == 1
        assert writer.write_dead_letters([letter]) == 1
        assert writer.write_policy([policy]) == {
            "decisions": 1, "actions": 1, "killswitch": 1, "audit_log": 1, "incidents": 1
        }  # fmt: skip
        rows: dict[str, msgspec.Struct] = {
            "events": event, "findings": finding, "findings_versions": finding, "windows": window,
            "dead_letters": DeadLetterRow.of(letter, PiiScanner()),
            "decisions": policy.decisions[0], "actions": policy.attempts[0],
            "killswitch": policy.killswitch[0], "audit_log": policy.audit[0],
            "incidents": policy.incidents[0],
        }  # fmt: skip
        assert set(rows) == set(TABLES)

        for table, row_type in TABLES.items():
            columns = columns_of(row_type)
            table_columns = _table_columns(client, table)
            inserted = [name for name, _, kind in table_columns if kind == ""]
            assert sorted(columns.names) == sorted(inserted), table
            types = {name: column_type for name, column_type, _ in table_columns}
            for name in columns.names:  # an int goes in as ticks: milliseconds at precision 3
                if types[name].startswith("DateTime64"):
                    assert types[name] == "DateTime64(3, 'UTC')", (table, name)
            expected = [
                _written(value) if types[name] == "String" else value
                for name, value in zip(columns.names, columns.values(rows[table]), strict=True)
            ]
            assert _read_back(client, table, columns.names, types) == expected, table
    finally:
        client.close()
