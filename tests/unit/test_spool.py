"""The sink's crash-safe spool: batches saved whole or not at all, listed, removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.storage.spool import Spool, SpoolEntry


def test_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    values = [b"first", b"", b"\x00\xff binary"]
    path = spool.save("scored", values)
    assert path.parent == spool.directory and "-scored-" in path.name
    assert list(spool.entries()) == [(path, SpoolEntry("scored", values))]


def test_entries_come_in_save_order_each_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    saved = {spool.save(kind, [kind.encode(), bytes([i])]) for i, kind in
             enumerate(["windows", "scored", "policy", "scored", "dead_letters"])}  # fmt: skip
    listed = [path for path, _ in spool.entries()]
    assert listed == sorted(saved)  # names start with the save time
    assert [entry.values[1] for _, entry in spool.entries()] == [bytes([i]) for i in range(5)]
    assert [path for path, _ in spool.entries()] == listed  # the same order every time
    for path, entry in spool.entries():
        assert f"-{entry.kind}-" in path.name and entry.values[0] == entry.kind.encode()


def test_nothing_saved_yet(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "never-created")
    assert list(spool.entries()) == []
    assert not spool.directory.exists()  # listing does not create it


def test_an_interrupted_write_leaves_no_visible_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    kept = spool.save("scored", [b"kept"])

    def half_written(path: Path, data: bytes) -> int:
        with path.open("wb") as file:
            file.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_written)
    with pytest.raises(OSError, match="disk full"):
        spool.save("windows", [b"lost" * 100])
    monkeypatch.undo()

    def killed_before_rename(path: Path, target: Path) -> Path:
        raise KeyboardInterrupt  # the process stops between the write and the rename

    monkeypatch.setattr(Path, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        spool.save("windows", [b"lost too"])
    monkeypatch.undo()

    partial = sorted(p.name for p in tmp_path.iterdir() if p != kept)
    assert len(partial) == 2 and all(n.startswith(".") and n.endswith(".tmp") for n in partial)
    assert list(spool.entries()) == [(kept, SpoolEntry("scored", [b"kept"]))]


def test_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = spool.save("scored", [b"1"]), spool.save("scored", [b"2"])
    spool.remove(first)
    assert [path for path, _ in spool.entries()] == [second]
    spool.remove(first)  # already gone: a replay interrupted after the remove is fine
    spool.remove(second)
    assert list(spool.entries()) == []
