"""A crash-safe spool: the Kafka records of a batch whose insert was cut short.

When the worker is stopped mid-retry its offsets are not committed, but a graceful stop may
still commit the offsets of batches already handed to the sink. Spooling the records first
means no committed offset can ever stand for rows that were not stored: the sink replays the
spool when it opens, before it inserts anything new.

An entry that can never be replayed (an unreadable file, or records ClickHouse refuses) is
moved to ``quarantine/`` under the spool, so one bad file cannot stop every later start.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import msgspec

from monitor.errors import StorageError
from monitor.ingest.decode import RawMessage

QUARANTINE: Final = "quarantine"


class SpoolEntry(msgspec.Struct):
    """One interrupted batch: the sink kind and the Kafka records it was storing."""

    kind: str
    messages: list[RawMessage]


class _ValuesEntry(msgspec.Struct):
    """The format before records kept their origin: raw values only."""

    kind: str
    values: list[bytes]


class UnreadableEntry(StorageError):
    """A spool file that cannot be read or decoded."""


_decode = msgspec.msgpack.Decoder(SpoolEntry).decode
_decode_values = msgspec.msgpack.Decoder(_ValuesEntry).decode


class Spool:
    """Batches saved as one msgpack file each under ``directory``, replayed in file order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.quarantine_dir = directory / QUARANTINE

    def save(self, kind: str, messages: Sequence[RawMessage]) -> Path:
        """Write one batch; the file appears whole or not at all (written, then renamed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{kind}-{uuid.uuid4().hex}.msgpack"  # sorts by save time
        partial = self.directory / f".{name}.tmp"
        partial.write_bytes(msgspec.msgpack.encode(SpoolEntry(kind, list(messages))))
        path = self.directory / name
        partial.replace(path)
        return path

    def paths(self) -> list[Path]:
        """Every saved batch, oldest first (quarantined ones aside)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.msgpack"))

    def load(self, path: Path) -> SpoolEntry:
        """The batch saved at ``path``; ``UnreadableEntry`` if it cannot be read."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UnreadableEntry(f"cannot read {path}: {exc}") from exc
        try:
            return _decode(data)
        except msgspec.DecodeError as exc:
            try:
                old = _decode_values(data)
            except msgspec.DecodeError:
                raise UnreadableEntry(f"{path.name} is not a spool entry: {exc}") from exc
            # Written before records kept their origin: replayable, origin unknown.
            return SpoolEntry(
                old.kind, [RawMessage(v, None, "", 0, i, 0) for i, v in enumerate(old.values)]
            )

    def entries(self) -> Iterator[tuple[Path, SpoolEntry]]:
        """Every saved batch, oldest first; remove each once it is stored."""
        for path in self.paths():
            yield path, self.load(path)

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def quarantine(self, path: Path) -> Path:
        """Move ``path`` out of the replay into ``quarantine/``; returns where it now is."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / path.name
        path.replace(target)
        return target
