"""A demo reports on its own run: the previous demo's embedded database is set aside."""

from __future__ import annotations

from pathlib import Path

from monitor.config import Settings, StorageSettings
from monitor.devtools.demo import set_previous_database_aside


def test_the_previous_demos_database_moves_aside_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert set_previous_database_aside(settings) is None  # first run: nothing to move
    (tmp_path / "chdb").mkdir()
    (tmp_path / "chdb" / "old").write_text("run 1")
    assert set_previous_database_aside(settings) == tmp_path / "chdb.previous"
    assert not (tmp_path / "chdb").exists()
    (tmp_path / "chdb").mkdir()
    (tmp_path / "chdb" / "old").write_text("run 2")
    set_previous_database_aside(settings)
    assert (tmp_path / "chdb.previous" / "old").read_text() == "run 2"  # only the last one kept


def test_a_configured_database_is_never_moved(tmp_path: Path) -> None:
    (tmp_path / "chdb").mkdir()
    settings = Settings(
        data_dir=tmp_path, storage=StorageSettings(dsn=f"chdb://{tmp_path / 'chdb'}")
    )
    assert set_previous_database_aside(settings) is None
    assert (tmp_path / "chdb").exists()
