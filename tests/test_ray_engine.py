"""``audit scan --engine ray`` on a local Ray instance (real photos, the real model, a real
database): the same fields as the local engine, in the first phase and, with a fitted head, in
the second; an unreadable image recorded and the scan going on; a rerun doing nothing; the node
probe and the options' refusals; one line when Ray is missing."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import ray
from ray_support import assert_complete, assert_same_results, copies_of_the_sample_photos, results
from synthetic_images import own_classes_folder
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.images import open_rgb
from audit.scan.ray_engine import ClusterError, check_nodes
from audit.store import db

runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, object_store_memory=96 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return copies_of_the_sample_photos(tmp_path_factory.mktemp("ray-photos"), 30, unreadable=True)


def scan(*arguments: str) -> str:
    result = runner.invoke(app, ["scan", *arguments, "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_fields_equal_the_local_engine_s(local_ray, photos):
    scan("csv", "--root", str(photos), "--name", "ray-same", "--workers", "0")
    dataset = db.load_dataset("ray-same")
    local = results(dataset)
    output = scan("csv", "--root", str(photos), "--name", "ray-same", "--engine", "ray", "--restart")
    assert "scanned 31, already done 0, unreadable 1" in output
    assert_same_results(local, results(dataset))
    unreadable = dataset.match(db.F("filepath").ends_with("empty.jpg")).first()
    assert unreadable[names.CATEGORY] == names.ERROR_CATEGORY and "empty file" in unreadable[names.ERROR]
    assert_complete(dataset.match(db.F("filepath").ends_with("empty.jpg") == False), every_sample_of=dataset)  # noqa: E712
    again = scan("csv", "--root", str(photos), "--name", "ray-same", "--engine", "ray")
    assert "scanned 0, already done 31" in again


def test_with_a_fitted_head_both_phases_run_on_ray(local_ray, tmp_path_factory):
    folder, _planted = own_classes_folder(tmp_path_factory.mktemp("ray-own-classes"))
    scan("folder", "--root", str(folder), "--name", "ray-fit", "--workers", "0")
    dataset = db.load_dataset("ray-fit")
    local = results(dataset)  # the folds follow the sample ids: the same dataset, scanned again on Ray
    output = scan("folder", "--root", str(folder), "--name", "ray-fit", "--engine", "ray", "--restart")
    assert "head: fit" in output and "examined again" in output
    assert_same_results(local, results(dataset))
    assert dataset.exists(names.GRADCAM_PRED).count() > 0  # class maps through the fold heads, drawn on the actors
    assert_complete(dataset)


def test_read_tasks_decode_real_photos_in_a_process_without_torch_or_fiftyone(photos, embedded_model):
    """A read task as Ray ships it (cloudpickled) runs in a fresh process: the pixels equal the
    local engine's model input, an unreadable file is named, and neither torch nor FiftyOne is
    imported (a decoder per core stays small)."""
    import cloudpickle

    from audit.scan.ray_engine import _datasource
    from audit.scan.ray_tasks import ItemsChunk, Source

    files = sorted((photos.parent / "images").iterdir())[:3] + [photos.parent / "images" / "empty.jpg"]
    items = tuple((str(i), str(path), "tabby", None) for i, path in enumerate(files))
    preprocess = embedded_model.preprocess
    source = Source("mongodb://unused", "", "", "", "", "", "", False, (preprocess.recipe,))
    [task] = _datasource([ItemsChunk(items, len(items))], source).get_read_tasks(1)
    run_it = ("import pickle, sys; from ray.data.block import BlockAccessor; task = pickle.load(sys.stdin.buffer); "
              "[block] = list(task()); columns = BlockAccessor.for_block(block).to_numpy(); "
              "heavy = sorted(m for m in ('torch', 'fiftyone') if m in sys.modules); "
              "pickle.dump(({k: v.tolist() for k, v in columns.items()}, heavy), sys.stdout.buffer)")
    result = subprocess.run([sys.executable, "-c", run_it], input=cloudpickle.dumps(task), capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    columns, heavy = pickle.loads(result.stdout)
    assert heavy == []
    assert columns["error"] == ["", "", "", "UnreadableImage: empty file (0 bytes)"]
    for row, path in enumerate(files[:3]):
        pixels = np.array(columns["pixels0"][row], dtype=np.uint8)
        expected = preprocess.pixels(open_rgb(path, preprocess.resize_short)).numpy()
        assert np.array_equal(pixels, expected), path.name


def test_the_node_probe_names_what_a_node_cannot_reach(local_ray, tmp_path):
    nodes = [node for node in ray.nodes() if node["Alive"]]
    with pytest.raises(ClusterError, match="cannot reach the database at mongodb://127.0.0.1:1 "):
        check_nodes(ray, nodes, tmp_path, "mongodb://127.0.0.1:1")
    assert list(tmp_path.iterdir()) == []  # the probe files are gone


@pytest.mark.parametrize("arguments, says", [
    (["--shard", "1/2"], "--engine ray splits it across the cluster itself"),
    (["--actors", "none"], "is not a number of actors"),
])
def test_options_that_cannot_go_together_are_refused(arguments, says):
    result = runner.invoke(app, ["scan", "sample", "--name", "ray-refused", "--engine", "ray", *arguments])
    assert result.exit_code == 2 and says in result.output
    assert "ray-refused" not in db.list_datasets()


def test_without_ray_the_scan_says_how_to_install_it():
    hide_ray = ("import sys; sys.modules['ray'] = None; from audit.cli import run; "
                "sys.argv = ['audit', 'scan', 'sample', '--name', 'ray-missing', '--engine', 'ray']; run()")
    result = subprocess.run([sys.executable, "-c", hide_ray], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --engine ray needs Ray: pip install 'audit[ray]' "
                                                  "(or pip install 'ray[data]>=2.50')"]
    assert "ray-missing" not in db.list_datasets()
