"""The codec of the workers' faust tables: JSON text, and a changelog record that does not
decode as such is read as absent (skipped, logged and counted) rather than raised.

Only the workers write the changelogs, so a bad record there takes a bug or a hand-written
record; but faust's table recovery stops at the first record it cannot decode and the worker
never becomes ready, for every role it runs. Skipping loses at most that one key's state (a
window re-counted from later partials, a kill switch re-engaged by its next decision), which
is the lesser harm than a worker that cannot start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from faust.serializers.codecs import Codec
from faust.types import CollectionT

log = logging.getLogger(__name__)
T = TypeVar("T", bound=CollectionT)


class TableText(Codec):
    """JSON strings; anything else (bad UTF-8, bad JSON, not a string) decodes to ``None``."""

    def __init__(self, table: str, on_skip: Callable[[], None] | None = None) -> None:
        super().__init__(table=table)
        self.table = table
        self.on_skip = on_skip

    def _loads(self, s: bytes) -> Any:
        try:
            value = json.loads(s)
        except ValueError:  # UnicodeDecodeError is one
            value = None
        if isinstance(value, str):
            return value
        log.warning(
            "table %s: skipped a changelog record that is not JSON text (%d bytes)",
            self.table, len(s),
        )  # fmt: skip
        if self.on_skip is not None:
            self.on_skip()
        return None

    def _dumps(self, s: Any) -> bytes:
        return json.dumps(s).encode()


def with_table_codec(table: T, on_skip: Callable[[], None] | None = None) -> T:
    """``table`` (just made by ``app.Table``, before its changelog topic or store exist) with
    this codec for its keys and values (faust picks a table's codec from its key and value
    types, and ours are ``str``: JSON)."""
    codec = TableText(table.name, on_skip)
    table.key_serializer = codec  # type: ignore[attr-defined]
    table.value_serializer = codec  # type: ignore[attr-defined]
    # app.Table already made the changelog topic (its decoder is compiled when it is made)
    # to register the table by the topic's name; make it again, same name, with the codec.
    table.changelog_topic = table._new_changelog_topic()  # type: ignore[attr-defined]
    return table
