"""ClickHouse cannot write for a while, mid-stream, for real:

- ``disk_full``: the chdb directory is a size-limited tmpfs, filled up with a file: ClickHouse
  refuses every insert (``NOT_ENOUGH_SPACE``, code 243) until the file is deleted;
- ``immutable`` (long run only): every table directory gets ``chattr +i``, so ClickHouse cannot
  create a part (``filesystem error: Operation not permitted``, code 1001) until ``chattr -i``.
  Permissions cannot do this: the tests run as root.

While storage fails the sink retries with backoff (``llm_monitor_sink_errors_total`` rises,
Prometheus holds the ``LLMMonitorSinkFailing`` rule pending over the real worker metrics) and
Kafka holds the backlog (the sink's group commits nothing beyond the last stored batch); once
storage is back every event is stored exactly once. Figures: from the repair to the first
insert, and to the sink having committed everything that was waiting.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from monitor.devtools.generate import generate_events
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import scalar
from tests.faults.support import (
    EVENTS,
    LONG,
    Offsets,
    PacedProducer,
    record_figure,
    size,
    start_prometheus,
    stored_ids,
    valid_events,
    wait_sent,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(size(600, 1200))]

FAIL_S = size(30.0, 60.0)
RATE = 100.0
TOTAL = size(4_000, 10_000)
SINK_INPUTS = ("llm.scored", "llm.events.dlq", "llm.windows", "llm.policy")
TMPFS_SIZE = "256m"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


class DiskFull:
    """The chdb directory on its own small tmpfs; ``fail`` fills it and keeps it full (like a
    neighbour writing to the same disk: ClickHouse frees space as it drops merged-away parts,
    and the filler takes it), ``repair`` stops and deletes the filler."""

    def __init__(self, chdb: Path) -> None:
        self.chdb = chdb
        self.filler = chdb / "filler.bin"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: BinaryIO | None = None
        chdb.mkdir(parents=True)
        mounted = run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(chdb))
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")

    def _fill(self, file: BinaryIO) -> None:
        """Write until the filesystem is full (ENOSPC), in 64 KiB steps."""
        chunk = b"\0" * 65_536
        try:
            while True:
                file.write(chunk)
                file.flush()
        except OSError:  # ENOSPC: full, which is the point
            pass

    def _keep_full(self, file: BinaryIO) -> None:
        while not self._stop.wait(0.02):  # the filler's own polling period
            self._fill(file)

    def fail(self) -> None:
        self._file = file = self.filler.open("wb", buffering=0)
        self._fill(file)
        self._thread = threading.Thread(target=self._keep_full, args=(file,), daemon=True)
        self._thread.start()

    def repair(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._file is not None:
            self._file.close()
        self.filler.unlink()

    def close(self) -> None:
        self._stop.set()
        run("umount", "-l", str(self.chdb))


class Immutable:
    """``chattr +i`` on every table directory of the chdb store: no new part can be made."""

    def __init__(self, chdb: Path) -> None:
        self.chdb = chdb
        self.dirs: list[Path] = []
        probe = chdb.parent / "chattr-probe"
        probe.touch()
        tried = run("chattr", "+i", str(probe))
        run("chattr", "-i", str(probe))
        if tried.returncode != 0:
            pytest.skip(f"chattr +i does not work here ({tried.stderr.strip()})")

    def fail(self) -> None:
        self.dirs = [p for p in self.chdb.glob("store/*/*") if p.is_dir()]
        assert self.dirs, "no table directory under the chdb store"
        for path in self.dirs:
            subprocess.run(["chattr", "+i", str(path)], check=True, timeout=60)

    def repair(self) -> None:
        for path in self.dirs:
            subprocess.run(["chattr", "-i", str(path)], check=True, timeout=60)
        self.dirs = []

    def close(self) -> None:
        self.repair()


MODES = ["disk_full", "immutable"] if LONG else ["disk_full"]


@pytest.fixture(params=MODES)
def storage(
    request: pytest.FixtureRequest, workers: WorkerHarness
) -> Iterator[DiskFull | Immutable]:
    chdb = workers.data_dir / "chdb"
    fault = DiskFull(chdb) if request.param == "disk_full" else Immutable(chdb)
    try:
        yield fault
    finally:
        workers.stop_all()  # before the unmount: the sink holds files there
        fault.close()


def test_storage_failure_is_retried_and_nothing_is_lost(
    storage: DiskFull | Immutable, workers: WorkerHarness, tmp_path: Path
) -> None:
    mode = "disk_full" if isinstance(storage, DiskFull) else "immutable"
    records = list(generate_events(TOTAL, seed=41, bad_fraction=0.01))
    ids = {e.request_id for e in valid_events(records)}
    process = workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    prometheus = start_prometheus([f"127.0.0.1:{workers.port}"], tmp_path / "prometheus")
    offsets = Offsets(workers.bootstrap)

    def stored() -> float:
        return workers.metric("llm_monitor_sink_rows_total", table="events")

    def errors() -> float:
        return workers.metric("llm_monitor_sink_errors_total")

    try:
        producer = PacedProducer(workers.bootstrap, records, RATE)
        producer.start()
        wait_sent(producer, int(RATE * 8))
        workers.wait_for(lambda: stored() > 0, what="the first events stored")

        storage.fail()
        failed_at = time.monotonic()
        stored_at_failure = stored()
        workers.wait_for(lambda: errors() >= 2, timeout_s=FAIL_S, what="the sink retrying")
        alert_states: set[str] = set()
        # The fault's length (pacing, not a wait for anything); meanwhile, watch the alert.
        while time.monotonic() - failed_at < FAIL_S:
            alert_states |= prometheus.alert_states("LLMMonitorSinkFailing")
            time.sleep(1.0)
        errors_during = errors()
        stored_during = stored() - stored_at_failure
        backlog = offsets.lag(workers.group, ("llm.scored",))
        sent_during = producer.sent

        storage.repair()
        repaired = time.monotonic()
        targets = offsets.ends(SINK_INPUTS)
        workers.wait_for(
            lambda: stored() > stored_at_failure + stored_during, timeout_s=120,
            what="an insert after the repair",
        )  # fmt: skip
        first_insert = time.monotonic()
        done = offsets.wait_caught_up(workers, targets, 300, "the sink caught up after the repair")
        producer.finish(timeout_s=600)
        workers.wait_for(
            lambda: offsets.lag(workers.group, (EVENTS, *SINK_INPUTS)) == 0,
            timeout_s=300, what="every event stored and its offset committed",
        )  # fmt: skip
        assert process.poll() is None and len(workers.processes) == 1, "the worker was restarted"
    finally:
        prometheus.stop()
    workers.stop_all()

    stored_set = stored_ids(workers)
    rows = scalar(workers, "SELECT count() FROM llm_monitor.events FINAL")
    distinct = scalar(workers, "SELECT count(DISTINCT request_id) FROM llm_monitor.events")
    record_figure(
        "storage_failing", fault=mode, fail_s=FAIL_S, events=TOTAL, valid=len(ids), rate=RATE,
        sink_errors_during=errors_during, rows_stored_during=stored_during,
        scored_backlog_at_repair=backlog, sent_before_repair=sent_during,
        alert_states=sorted(alert_states),
        repair_to_first_insert_s=round(first_insert - repaired, 1),
        repair_to_caught_up_s=round(done - repaired, 1),
        lost=len(ids - stored_set), duplicates=rows - distinct if rows == len(ids) else None,
    )  # fmt: skip
    assert errors_during >= 2
    assert stored_during == 0, "rows were stored while storage was failing"
    assert backlog > 0, "Kafka held no backlog: the sink committed what it did not store"
    assert alert_states & {"pending", "firing"}, "the LLMMonitorSinkFailing expression never held"
    assert stored_set == ids
    assert rows == distinct == len(ids)
