"""The sink's crash-safe spool: batches saved whole or not at all, listed, removed,
quarantined; files it cannot read are refused with ``UnreadableEntry``, never half-read."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from monitor.ingest.decode import RawMessage
from monitor.storage.spool import Spool, SpoolEntry, UnreadableEntry


def records(*values: bytes) -> list[RawMessage]:
    return [RawMessage(v, b"k", "llm.scored", 2, 10 + i, 1_700_000_000_000 + i)
            for i, v in enumerate(values)]  # fmt: skip


def test_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    messages = records(b"first", b"", b"\x00\xff binary")
    path = spool.save("scored", messages)
    assert path.parent == spool.directory and "-scored-" in path.name
    assert list(spool.entries()) == [(path, SpoolEntry("scored", messages))]
    assert spool.load(path).messages[2].offset == 12  # each record keeps its origin


def test_entries_come_in_save_order_each_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    saved = {spool.save(kind, records(kind.encode(), bytes([i]))) for i, kind in
             enumerate(["windows", "scored", "policy", "scored", "dead_letters"])}  # fmt: skip
    listed = [path for path, _ in spool.entries()]
    assert listed == sorted(saved) == spool.paths()  # names start with the save time
    values = [entry.messages[1].value for _, entry in spool.entries()]
    assert values == [bytes([i]) for i in range(5)]
    assert [path for path, _ in spool.entries()] == listed  # the same order every time
    for path, entry in spool.entries():
        assert f"-{entry.kind}-" in path.name and entry.messages[0].value == entry.kind.encode()


def test_nothing_saved_yet(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "never-created")
    assert list(spool.entries()) == []
    assert not spool.directory.exists()  # listing does not create it


def test_an_interrupted_write_leaves_no_visible_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    kept = spool.save("scored", records(b"kept"))

    def half_written(path: Path, data: bytes) -> int:
        with path.open("wb") as file:
            file.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_written)
    with pytest.raises(OSError, match="disk full"):
        spool.save("windows", records(b"lost" * 100))
    monkeypatch.undo()

    def killed_before_rename(path: Path, target: Path) -> Path:
        raise KeyboardInterrupt  # the process stops between the write and the rename

    monkeypatch.setattr(Path, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        spool.save("windows", records(b"lost too"))
    monkeypatch.undo()

    partial = sorted(p.name for p in tmp_path.iterdir() if p != kept)
    assert len(partial) == 2 and all(n.startswith(".") and n.endswith(".tmp") for n in partial)
    assert list(spool.entries()) == [(kept, SpoolEntry("scored", records(b"kept")))]


def test_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = spool.save("scored", records(b"1")), spool.save("scored", records(b"2"))
    spool.remove(first)
    assert [path for path, _ in spool.entries()] == [second]
    spool.remove(first)  # already gone: a replay interrupted after the remove is fine
    spool.remove(second)
    assert list(spool.entries()) == []


def test_quarantine_takes_an_entry_out_of_the_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    bad, good = spool.save("scored", records(b"bad")), spool.save("scored", records(b"good"))
    moved = spool.quarantine(bad)
    assert moved == tmp_path / "quarantine" / bad.name and moved.is_file() and not bad.exists()
    assert spool.paths() == [good]
    assert spool.load(moved).messages[0].value == b"bad"  # kept whole, to inspect


@pytest.mark.parametrize(
    "content",
    [b"", b"\x93 truncated", msgspec.msgpack.encode({"kind": "scored"}), b"\xff" * 64],
)
def test_a_file_that_is_not_an_entry_is_unreadable(tmp_path: Path, content: bytes) -> None:
    spool = Spool(tmp_path)
    path = tmp_path / "00000000000000000001-scored-x.msgpack"
    path.write_bytes(content)
    with pytest.raises(UnreadableEntry, match=path.name):
        spool.load(path)
    with pytest.raises(UnreadableEntry):
        list(spool.entries())


def test_an_entry_of_raw_values_from_before_loads_with_unknown_origin(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = tmp_path / "00000000000000000001-windows-x.msgpack"
    path.write_bytes(msgspec.msgpack.encode({"kind": "windows", "values": [b"a", b"b"]}))
    entry = spool.load(path)
    assert entry.kind == "windows" and [m.value for m in entry.messages] == [b"a", b"b"]
    assert {m.topic for m in entry.messages} == {""}
