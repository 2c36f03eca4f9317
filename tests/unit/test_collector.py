"""The worker's garbage-collector settings: start-up objects frozen, young passes rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.collector import YOUNG_THRESHOLD, tune_for_streaming


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_tuning_freezes_startup_objects_and_keeps_older_generations() -> None:
    _, middle, old = gc.get_threshold()
    tune_for_streaming()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.isenabled()  # cycles are still collected, only less often
