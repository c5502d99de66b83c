"""A real two-node Ray cluster on loopback (head 127.0.0.2, worker 127.0.0.3, started with
`ray start`, small object stores) running `audit scan --engine ray` as a separate driver process:
a worker node killed with SIGKILL mid-run, a model actor killed mid-batch, the driver killed and
run again. Each ends with every sample done once, one map file per sample, no temporary file,
and the local engine's results. About three minutes: `make test-cluster` (AUDIT_CLUSTER_TESTS=1)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_support import HEAD, WORKER, LoopbackCluster, assert_complete, assert_same_results, copies_of_the_sample_photos, results
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.store import db

pytestmark = pytest.mark.skipif(os.environ.get("AUDIT_CLUSTER_TESTS") != "1",
                                reason="the two-node cluster test runs with `make test-cluster`")

BIN = Path(sys.executable).parent
N_IMAGES = 160


@pytest.fixture(scope="module")
def cluster():
    started = LoopbackCluster()
    try:
        started.start()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return copies_of_the_sample_photos(tmp_path_factory.mktemp("cluster-photos"), N_IMAGES)


@pytest.fixture(scope="module")
def local_scan(photos):
    result = CliRunner().invoke(app, ["scan", "csv", "--root", str(photos), "--name", "cluster-local",
                                      "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    return results(db.load_dataset("cluster-local"))


def start_scan(cluster: LoopbackCluster, photos: Path, name: str) -> subprocess.Popen:
    """The driver: `audit scan --engine ray` on the cluster, in its own process group, writing to
    the database every 8 samples."""
    return subprocess.Popen([str(BIN / "audit"), "scan", "csv", "--root", str(photos), "--name", name,
                             "--engine", "ray", "--address", cluster.address, "--actors", "2", "--batch-size", "4"],
                            env={**cluster.env, "AUDIT_FLUSH_EVERY": "8"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_done(name: str, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if name in db.list_datasets():  # counted in the collection itself: the schema here may predate the scan's fields
            if db.load_dataset(name)._sample_collection.count_documents({names.DONE: {"$ne": None}}) >= count:
                return
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"fewer than {count} samples done in {timeout} s"
        time.sleep(0.2)


def finish(process: subprocess.Popen) -> str:
    """The driver's summary line, once it exits (with status 0)."""
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    return next(line for line in output.splitlines() if line.startswith("scanned "))


def check(name: str, local_scan) -> None:
    on_ray = db.load_dataset(name)
    on_ray.reload()  # written by the driver process: this process's copy of the dataset predates it
    assert_complete(on_ray)
    assert_same_results(local_scan, results(on_ray))


def test_a_worker_node_killed_mid_run(cluster, photos, local_scan):
    name = "cluster-node-killed"
    driver = start_scan(cluster, photos, name)
    wait_until_done(name, 16, driver)
    hosted = len(cluster.actors_on(WORKER))
    cluster.kill_node(WORKER)
    output = finish(driver)
    assert f"scanned {N_IMAGES}, already done 0" in output
    check(name, local_scan)
    assert hosted, "no model actor ran on the worker node when it was killed"
    cluster.start_worker()  # back for the next tests


def test_a_model_actor_killed_mid_batch(cluster, photos, local_scan):
    name = "cluster-actor-killed"
    driver = start_scan(cluster, photos, name)
    wait_until_done(name, 16, driver)
    actors = cluster.actors_on(HEAD) + cluster.actors_on(WORKER)
    assert actors
    os.kill(actors[0].pid, signal.SIGKILL)
    output = finish(driver)
    assert f"scanned {N_IMAGES}, already done 0" in output
    check(name, local_scan)


def test_the_driver_killed_then_run_again(cluster, photos, local_scan):
    name = "cluster-driver-killed"
    driver = start_scan(cluster, photos, name)
    wait_until_done(name, 16, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    output = finish(start_scan(cluster, photos, name))
    done_before = int(output.split("already done ")[1].split(",")[0])
    assert 16 <= done_before < N_IMAGES and f"scanned {N_IMAGES - done_before}," in output
    check(name, local_scan)
