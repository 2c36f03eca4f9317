"""A crash-safe spool: the raw Kafka values of a batch whose insert was cut short.

When the worker is stopped mid-retry its offsets are not committed, but a graceful stop may
still commit the offsets of batches already handed to the sink. Spooling the values first means
no committed offset can ever stand for rows that were not stored: the sink replays the spool
when it opens, before it inserts anything new.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec


class SpoolEntry(msgspec.Struct):
    """One interrupted batch: the sink kind and the raw Kafka values it was inserting."""

    kind: str
    values: list[bytes]


_decode = msgspec.msgpack.Decoder(SpoolEntry).decode


class Spool:
    """Batches saved as one msgpack file each under ``directory``, replayed in file order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, kind: str, values: Sequence[bytes]) -> Path:
        """Write one batch; the file appears whole or not at all (written, then renamed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{kind}-{uuid.uuid4().hex}.msgpack"  # sorts by save time
        partial = self.directory / f".{name}.tmp"
        partial.write_bytes(msgspec.msgpack.encode(SpoolEntry(kind, list(values))))
        path = self.directory / name
        partial.replace(path)
        return path

    def entries(self) -> Iterator[tuple[Path, SpoolEntry]]:
        """Every saved batch, oldest first; remove each once it is stored."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.msgpack")):
            yield path, _decode(path.read_bytes())

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
