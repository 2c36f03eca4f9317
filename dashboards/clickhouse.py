"""A ClickHouse query for grafana-clickhouse-datasource panels.

grafana-foundation-sdk has no builder for this plugin, so this is one in the SDK's own terms
(a ``Dataquery`` variant with ``to_json``, wrapped in a ``Builder``): panels take it like any
other target. Format 0 is a time series, 1 a table.
"""

from __future__ import annotations

import typing

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants

PLUGIN = "grafana-clickhouse-datasource"
UID = "clickhouse"
TIME_SERIES, TABLE = 0, 1


class ClickHouseQuery(cogvariants.Dataquery):
    def __init__(self, raw_sql: str, ref_id: str = "A", format_val: int = TABLE) -> None:
        self.raw_sql = raw_sql
        self.ref_id = ref_id
        self.format_val = format_val

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": {"type": PLUGIN, "uid": UID},
            "editorType": "sql",
            "queryType": "table" if self.format_val == TABLE else "timeseries",
            "format": self.format_val,
            "rawSql": self.raw_sql,
        }

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> ClickHouseQuery:
        return cls(str(data["rawSql"]), str(data.get("refId", "A")), int(data.get("format", 1)))


class Query(cogbuilder.Builder[ClickHouseQuery]):
    def __init__(self, raw_sql: str, *, time_series: bool = False, ref_id: str = "A") -> None:
        self._internal = ClickHouseQuery(raw_sql, ref_id, TIME_SERIES if time_series else TABLE)

    def build(self) -> ClickHouseQuery:
        return self._internal
