"""ClickHouse insert columns derived from the msgspec structs that are the rows.

Each table's row type is declared once, as a struct; its columns are its fields, in field
order, read with ``msgspec.inspect`` (never guessed from names):

- ``EpochMs`` (an int of epoch milliseconds) is a ``DateTime64(3)`` column named without the
  ``_ms`` suffix. The int goes in as it is: clickhouse-connect writes an int as the column's
  raw ticks, which at precision 3 are milliseconds, so no ``datetime`` is built per value.
- A field annotated with ``NOT_COLUMN`` is not stored.
- A nested struct is flattened: its fields are columns of the same table.
- A sequence of structs (``Finding.spans``) is an ``Array(Tuple(...))`` of their fields.
- Everything else goes in as it is; a ``bool`` is an ``int``, stored 0/1 in a UInt8 column.

The annotations live in ``Annotated[..., msgspec.Meta(extra=...)]``, which msgspec ignores when
encoding, so the structs' wire format (Kafka) is unaffected. Columns are derived once per type
and cached; the per-row function is one C-level ``attrgetter`` plus the span conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Final, Generic, TypeVar

import msgspec
import msgspec.inspect as mi

MARK: Final = "clickhouse"
EPOCH_MS: Final = msgspec.Meta(extra={MARK: "epoch_ms"})
NOT_COLUMN: Final = msgspec.Meta(extra={MARK: "not_column"})

EpochMs = Annotated[int, EPOCH_MS]
"""Epoch milliseconds, stored in a ``DateTime64(3, 'UTC')`` column named without ``_ms``."""

RowT = TypeVar("RowT", bound=msgspec.Struct)
Convert = Callable[[Any], Any]


@dataclass(frozen=True)
class Columns(Generic[RowT]):
    """A row type's insert columns: their names, and one row's values in the same order."""

    names: tuple[str, ...]
    values: Callable[[RowT], Sequence[Any]]
    not_columns: tuple[str, ...]  # fields marked NOT_COLUMN, as dotted paths


@dataclass(frozen=True)
class _Leaf:
    """One column: where its value is on the row, and how it is converted (None: as it is)."""

    name: str
    path: str
    convert: Convert | None


_cache: dict[type[msgspec.Struct], Columns[Any]] = {}


def columns_of(row_type: type[RowT]) -> Columns[RowT]:
    """The columns of ``row_type``, derived on first use and cached: never per row."""
    cached = _cache.get(row_type)
    if cached is None:
        cached = _cache[row_type] = _derive(row_type)
    return cached


def _derive(row_type: type[msgspec.Struct]) -> Columns[Any]:
    leaves: list[_Leaf] = []
    not_columns: list[str] = []
    _collect(row_type, "", leaves, not_columns)
    names = tuple(leaf.name for leaf in leaves)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TypeError(f"{row_type.__name__}: more than one field maps to {duplicates}")
    return Columns(names, _values_function(leaves), tuple(not_columns))


def _collect(
    struct_type: type[msgspec.Struct], prefix: str, leaves: list[_Leaf], not_columns: list[str]
) -> None:
    """Append the columns of ``struct_type``'s fields; nested structs add their own."""
    info = mi.type_info(struct_type)
    if not isinstance(info, mi.StructType):
        raise TypeError(f"{struct_type!r} is not a msgspec Struct")
    for field in info.fields:
        path = prefix + field.name
        mark, field_type = _mark(field.type)
        if mark == "not_column":
            not_columns.append(path)
        elif mark == "epoch_ms":
            if not field.name.endswith("_ms"):
                raise TypeError(f"{struct_type.__name__}.{field.name}: EpochMs needs an _ms name")
            leaves.append(_Leaf(field.name.removesuffix("_ms"), path, None))
        elif mark is not None:
            raise TypeError(f"{struct_type.__name__}.{field.name}: unknown mark {mark!r}")
        elif isinstance(field_type, mi.StructType):
            _collect(field_type.cls, path + ".", leaves, not_columns)
        elif _holds_structs(field_type):
            leaves.append(_Leaf(field.name, path, _struct_tuples))
        else:
            leaves.append(_Leaf(field.name, path, None))


def _mark(field_type: mi.Type) -> tuple[str | None, mi.Type]:
    """The field's ``clickhouse`` mark, if any, and its type without the metadata."""
    if isinstance(field_type, mi.Metadata):
        extra = field_type.extra or {}
        return extra.get(MARK), field_type.type
    return None, field_type


def _holds_structs(field_type: mi.Type) -> bool:
    """A list or tuple of structs: stored as an array of tuples."""
    sequences = (mi.ListType, mi.VarTupleType)
    return isinstance(field_type, sequences) and isinstance(field_type.item_type, mi.StructType)


def _struct_tuples(items: Sequence[msgspec.Struct]) -> list[tuple[Any, ...]]:
    """Structs as tuples of their fields, the shape clickhouse-connect inserts as Tuple."""
    return list(map(msgspec.structs.astuple, items))


def _values_function(leaves: Sequence[_Leaf]) -> Callable[[Any], Sequence[Any]]:
    """One row's values: a single attrgetter (C) over every path, then the few conversions."""
    paths = [leaf.path for leaf in leaves]
    if len(paths) == 1:
        (only,) = paths
        one = attrgetter(only)

        def single(row: Any) -> tuple[Any, ...]:
            return (one(row),)

        get: Callable[[Any], tuple[Any, ...]] = single
    else:
        get = attrgetter(*paths)
    converts = [(i, leaf.convert) for i, leaf in enumerate(leaves) if leaf.convert is not None]
    if not converts:
        return get

    def values(row: Any) -> list[Any]:
        out = list(get(row))
        for index, convert in converts:
            out[index] = convert(out[index])
        return out

    return values
