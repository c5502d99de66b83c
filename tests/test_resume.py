"""Crash-safe resume, the scan lock and sharding: real `audit scan` processes killed with SIGKILL
at several points, frozen, interrupted, then resumed; and the lock and shards in-process."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import pytest
from conftest import SAMPLE_DATA

from audit import names
from audit.store import db
from audit.store.lock import LockError, ScanLock, _collection, held_locks

N_IMAGES = 72
AUDIT = str(Path(sys.executable).parent / "audit")


@pytest.fixture
def images_csv(tmp_path) -> Path:
    """N_IMAGES distinct files (hard links to the sample photos) and their labels."""
    rows = list(csv.DictReader(open(SAMPLE_DATA / "labels.csv", newline="")))
    folder = tmp_path / "images"
    folder.mkdir()
    lines = ["filepath,label"]
    for i in range(N_IMAGES):
        row = rows[i % len(rows)]
        target = folder / f"{i:03d}_{row['filepath']}"
        try:
            os.link(SAMPLE_DATA / row["filepath"], target)
        except OSError:
            target.write_bytes((SAMPLE_DATA / row["filepath"]).read_bytes())
        lines.append(f"images/{target.name},{row['label']}")
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def start_scan(table: Path, name: str, *extra: str) -> subprocess.Popen:
    """`audit scan csv` in its own process group (a kill takes its decoding workers too), flushing
    to the database every 4 samples so that a kill lands between and inside flushes."""
    env = {**os.environ, "AUDIT_FLUSH_EVERY": "4"}
    return subprocess.Popen([AUDIT, "scan", "csv", "--root", str(table), "--name", name, "--batch-size", "4",
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_from_a_terminal)


def as_from_a_terminal() -> None:
    """Ctrl-C's default disposition, as a shell gives a command it starts: a test run started in
    the background (``make test &``) would otherwise pass SIGINT down ignored, as POSIX has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, process: subprocess.Popen, timeout: float = 240.0, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the scan ended (status {process.returncode}) before the point to stop it: "
                        f"{process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the scan")
        time.sleep(poll)


def done_count(name: str) -> int:
    if name not in db.fo.list_datasets():
        return 0
    dataset = db.fo.load_dataset(name)
    return len(dataset.exists(names.DONE)) if dataset.has_sample_field(names.DONE) else 0


def half_written(name: str) -> int:
    """Samples with predictions written but no done marker: a flush in progress."""
    dataset = db.fo.load_dataset(name)
    return dataset._sample_collection.count_documents({names.PREDICTIONS: {"$ne": None}, names.DONE: None})


def check_nothing_half_done(name: str) -> int:
    """Every sample marked done has all its fields and a readable map file; returns how many."""
    dataset = db.fo.load_dataset(name)
    dataset.reload()
    done = dataset.exists(names.DONE)
    for sample in done:
        assert sample[names.ERROR] is None
        assert sample[names.PREDICTIONS] is not None and sample[names.PREDICTIONS].label
        assert sample[names.EIGENCAM_BOX] is not None and sample[names.SIGNALS] and "pred_index" in sample[names.SIGNALS]
        heat = cv2.imread(sample[names.EIGENCAM].map_path, cv2.IMREAD_GRAYSCALE)
        assert heat is not None and heat.max() == 255, sample.filepath
    assert len(set(done.values(names.DONE))) <= 1  # one set of settings
    return len(done)


def kill(process: subprocess.Popen, how: int = signal.SIGKILL) -> None:
    os.killpg(process.pid, how)
    process.wait(timeout=60)


def test_killed_frozen_and_interrupted_scans_resume_to_one_complete_pass(images_csv):
    name = "resume"
    # 1. killed early: as soon as the scan holds its lock (before or during the first flush)
    first = start_scan(images_csv, name, "--workers", "0")
    wait_for(lambda: bool(held_locks(name)), first)
    kill(first)
    done = [check_nothing_half_done(name)]
    assert held_locks(name), "a killed scan leaves its lock behind: the next scan must take it over"

    # 2. killed between flushes, after a frozen moment in which a second scan is refused
    second = start_scan(images_csv, name, "--workers", "1")
    wait_for(lambda: done_count(name) >= 8, second)
    os.killpg(second.pid, signal.SIGSTOP)  # alive but stuck: its lock must hold
    try:
        done.append(check_nothing_half_done(name))
        refused = subprocess.run([AUDIT, "scan", "csv", "--root", str(images_csv), "--name", name],
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 1, refused.stderr
        message = refused.stderr.strip().splitlines()[-1]
        assert message.startswith(f"error: dataset '{name}' is being scanned by pid {second.pid}"), message
        assert "Traceback" not in refused.stderr
    finally:
        kill(second)
    done.append(check_nothing_half_done(name))

    # 3. killed inside a flush: some fields of the flush written, its done markers not yet
    before = half_written(name)  # left by the kill before, if it landed inside a flush
    fourth = start_scan(images_csv, name, "--workers", "0")
    wait_for(lambda: half_written(name) > before or done_count(name) >= done[-1] + 16, fourth, poll=0.005)
    caught_inside_a_flush = half_written(name) > before
    kill(fourth)
    done.append(check_nothing_half_done(name))
    print("killed inside a flush:", caught_inside_a_flush)

    # 4. Ctrl-C (SIGINT to the process group, as a terminal sends it): stops cleanly, says how to resume
    third = start_scan(images_csv, name, "--workers", "1")
    wait_for(lambda: done_count(name) >= done[-1] + 4, third)
    kill(third, signal.SIGINT)
    stderr = third.stderr.read()
    assert third.returncode == 130, stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert not held_locks(name), "an interrupted scan releases its lock"
    done.append(check_nothing_half_done(name))
    print("done after each stop:", done)
    assert done == sorted(done) and done[-1] < N_IMAGES, done  # never undone; some left to do

    # 5. the same command again: finishes, redoing nothing already done
    final = subprocess.run([AUDIT, "scan", "csv", "--root", str(images_csv), "--name", name, "--batch-size", "4"],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "AUDIT_FLUSH_EVERY": "4"})
    assert final.returncode == 0, final.stderr
    assert f"scanned {N_IMAGES - done[-1]}, already done {done[-1]}, unreadable 0" in final.stderr
    dataset = db.fo.load_dataset(name)
    dataset.reload()
    assert len(dataset) == N_IMAGES and len(set(dataset.values("filepath"))) == N_IMAGES
    assert check_nothing_half_done(name) == N_IMAGES
    assert len(dataset.exists(names.CATEGORY)) == N_IMAGES
    maps = list(Path(dataset.first()[names.EIGENCAM].map_path).parent.iterdir())
    assert len([p for p in maps if p.suffix == ".png"]) == N_IMAGES
    assert not held_locks(name)


# --- the lock, in-process ---------------------------------------------------------------------------


def _plant(dataset: str, shard=(1, 1), host: str | None = None, pid: int = 1, age_seconds: float = 0.0) -> None:
    beat = datetime.now(timezone.utc) - timedelta(seconds=age_seconds)
    _collection().insert_one({"_id": f"{dataset}|{shard[0]}/{shard[1]}", "dataset": dataset, "kind": "scan",
                              "shard": list(shard),
                              "token": "planted", "host": host or socket.gethostname(), "pid": pid,
                              "pid_start": None, "heartbeat": beat, "started": beat})


def test_a_second_scan_is_refused_until_the_first_releases():
    with ScanLock("locked"):
        with pytest.raises(LockError, match=r"dataset 'locked' is being scanned by pid \d+ on "):
            ScanLock("locked").acquire()
    with ScanLock("locked"):
        pass
    assert not held_locks("locked")


def test_a_refusal_names_what_the_holder_is_doing():
    with ScanLock("relabelling", doing="relabelled"):
        with pytest.raises(LockError, match=r"dataset 'relabelling' is being relabelled by pid \d+ on "):
            ScanLock("relabelling").acquire()
    assert not held_locks("relabelling")


def test_shards_of_one_split_run_together_and_other_splits_are_refused():
    with ScanLock("sharded", (1, 2)), ScanLock("sharded", (2, 2)):
        for clash in ((1, 1), (1, 2), (1, 3)):
            with pytest.raises(LockError, match="shard"):
                ScanLock("sharded", clash).acquire()
    assert not held_locks("sharded")


def test_stale_locks_are_taken_over_live_ones_are_not():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant("dead-pid", pid=dead.pid)  # this host, process gone
    with ScanLock("dead-pid"):
        pass
    _plant("silent", host="elsewhere", age_seconds=3600)  # another machine, no heartbeat for an hour
    with ScanLock("silent", stale_after=300):
        pass
    _plant("alive", host="elsewhere", age_seconds=5)  # another machine, heartbeat fresh
    with pytest.raises(LockError, match="pid 1 on elsewhere"):
        ScanLock("alive", stale_after=300).acquire()
    _collection().delete_many({"dataset": "alive"})


def test_a_lock_taken_over_is_noticed_by_its_heartbeat():
    lock = ScanLock("stolen", heartbeat=0.05).acquire()
    try:
        _collection().delete_one({"_id": lock.id})
        deadline = time.monotonic() + 10
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.lost
    finally:
        lock.release()


def test_a_second_load_of_a_dataset_waits_for_the_first():
    import threading

    first = ScanLock("loading", kind="ingest").acquire()
    told = []
    threading.Timer(1.0, first.release).start()
    started = time.monotonic()
    with ScanLock("loading", kind="ingest", wait=True, on_wait=told.append):
        assert time.monotonic() - started >= 0.9
    assert len(told) == 1 and "is being loaded by pid" in told[0]
    with ScanLock("loading"):  # scans and loads do not exclude each other
        with ScanLock("loading", kind="ingest"):
            pass


# --- shards and pages, in-process ---------------------------------------------------------------------


def test_shards_partition_the_samples_and_pages_stream_them(embedded_model, monkeypatch, tmp_path):
    import audit.scan.pending as pending
    from audit.data.csvfile import read_csv
    from audit.data.ingest import ingest
    from audit.scan.options import ScanOptions
    from audit.scan.run import scan

    photos = sorted(SAMPLE_DATA.glob("*.jpg"))[:9]
    table = tmp_path / "few.csv"
    table.write_text("filepath,label\n" + "".join(f"{p},tabby\n" for p in photos))
    dataset, _ = ingest("shards", read_csv(table))
    monkeypatch.setattr(pending, "PAGE_SIZE", 2)  # several pages even for a few samples
    counts = []
    for index in (1, 2, 3):
        options = ScanOptions(workers=0, batch_size=4, shard=(index, 3))
        summary = scan(dataset, embedded_model, options=options)
        counts.append(summary.scanned)
        assert summary.write_seconds > 0 or summary.scanned == 0
    assert sum(counts) == len(photos) and max(counts) < len(photos)
    assert len(dataset.exists(names.DONE)) == len(photos)
    again = scan(dataset, embedded_model, options=ScanOptions(workers=0, batch_size=4))
    assert (again.scanned, again.skipped) == (0, len(photos))
    limited = scan(dataset, embedded_model, options=ScanOptions(workers=0, restart=True, limit=3))
    assert limited.scanned == 3
    assert len(dataset.exists(names.DONE)) == len(photos)  # the restarted ones are done again, the others untouched
    view = dataset.select(dataset.values("id")[-2:])  # a view, as the App's plugin passes
    assert scan(view, embedded_model, options=ScanOptions(workers=0, restart=True)).scanned == 2
