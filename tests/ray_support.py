"""What the Ray engine's tests and its benchmark share: photos to scan, the comparison of a Ray
scan with a local one sample by sample, the accounting of a finished scan (every sample done once,
its map file in place, nothing half-written left), and a two-node Ray cluster on loopback."""

from __future__ import annotations

import csv
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from audit import names
from audit.store import db

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
BIN = Path(sys.executable).parent
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
ACTOR = "ray::MapWorker(MapBatches(ModelActor))"  # a model actor's process title (".submit" added while busy)


def copies_of_the_sample_photos(folder: Path, count: int, unreadable: bool = False) -> Path:
    """``count`` distinct files (hard links to the sample photos) and a CSV of their labels; with
    ``unreadable``, one more: an empty file."""
    rows = list(csv.DictReader(open(SAMPLE_DATA / "labels.csv", newline="")))
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["filepath,label"]
    for i in range(count):
        row = rows[i % len(rows)]
        target = images / f"{i:05d}_{row['filepath']}"
        if not target.exists():
            try:
                os.link(SAMPLE_DATA / row["filepath"], target)
            except OSError:
                target.write_bytes((SAMPLE_DATA / row["filepath"]).read_bytes())
        lines.append(f"images/{target.name},{row['label']}")
    if unreadable:
        (images / "empty.jpg").write_bytes(b"")
        lines.append("images/empty.jpg,espresso")
    table = folder / "labels.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def results(dataset) -> dict[str, dict]:
    """Per file path, what a scan wrote for it (the map as its pixels): taken before the same
    dataset is scanned again with the other engine, or from another dataset of the same images."""
    taken = {}
    for sample in dataset.iter_samples():
        row = {field: sample[field] for field in (names.DONE, names.CATEGORY, names.ERROR, names.REASONS, names.SCORE)}
        if not sample[names.ERROR]:
            row.update(label=sample[names.PREDICTIONS].label, confidence=sample[names.PREDICTIONS].confidence,
                       boxes=[d.bounding_box for d in sample[names.EIGENCAM_BOX].detections],
                       embedding=sample[names.EMBEDDINGS], judged=sample[names.HEAD_DONE] is not None,
                       map=cv2.imread(sample[names.EIGENCAM].map_path, cv2.IMREAD_UNCHANGED).astype(int),
                       class_maps=[sample[field] is not None for field in (names.GRADCAM_PRED, names.GRADCAM_GIVEN)],
                       views=sorted(sample[names.SIGNALS].get("views", {})))
        taken[sample.filepath] = row
    return taken


def assert_same_results(local: dict, on_ray: dict, atol: float = 1e-4) -> None:
    """Two `results` of the same images agree: labels, categories, reasons, done markers and which
    maps and views exist equal; scores, probabilities, boxes, embeddings and map pixels within float noise."""
    assert sorted(local) == sorted(on_ray)
    for filepath, mine in local.items():
        other, where = on_ray[filepath], Path(filepath).name
        for exact in (names.DONE, names.CATEGORY, names.ERROR, names.REASONS, "label", "judged", "class_maps", "views"):
            assert mine.get(exact) == other.get(exact), (where, exact, mine.get(exact), other.get(exact))
        if mine[names.ERROR]:
            continue
        assert mine["judged"], where
        for close in (names.SCORE, "confidence"):  # no score: a class too few to judge, on both sides
            assert (mine[close] is None) == (other[close] is None), (where, close, mine[close], other[close])
            assert mine[close] is None or abs(mine[close] - other[close]) <= atol, (where, close, mine[close], other[close])
        np.testing.assert_allclose(mine["boxes"], other["boxes"], atol=1e-3, err_msg=where)
        np.testing.assert_allclose(mine["embedding"], other["embedding"], atol=atol, rtol=1e-4, err_msg=where)
        assert np.abs(mine["map"] - other["map"]).max() <= 1, where


def assert_complete(readable, every_sample_of=None) -> None:
    """Every sample (of ``every_sample_of``, default ``readable``) done under the scan key; exactly
    one map file per readable sample (named by its id, where its field points), nothing else (no
    temporary file) in the map folder."""
    dataset = every_sample_of if every_sample_of is not None else readable
    key = db.audit_info(dataset)["scan"]["key"]
    assert dataset.match(db.F(names.DONE) == key).count() == len(dataset)
    folder = db.maps_dir(dataset)
    files = sorted(path.name for path in folder.iterdir())
    assert not [name for name in files if not name.endswith(".png")], files
    ids, paths = readable.values(["id", f"{names.EIGENCAM}.map_path"])
    assert files == sorted(f"{sample_id}.png" for sample_id in ids)
    assert all(Path(path).parent == folder for path in paths)


class LoopbackCluster:
    """Two Ray nodes on this machine, with token authentication and fast node-death detection;
    everything they started is killed at the end (never other Ray processes of the machine)."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
        token = Path(self.folder) / "token"
        token.write_text(secrets.token_hex(32))
        with socket.socket() as probe:
            probe.bind((HEAD, 0))
            self.port = probe.getsockname()[1]
        self.address = f"{HEAD}:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                    "RAY_health_check_initial_delay_ms": "1000"}

    @classmethod
    def attach(cls, folder: str) -> "LoopbackCluster":
        """The cluster (or local Ray instance) whose processes were started with ``folder``."""
        cluster = cls.__new__(cls)
        cluster.folder = folder
        return cluster

    def ray(self, *arguments: str) -> str:
        result = subprocess.run([str(BIN / "ray"), *arguments], env=self.env, capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"ray {arguments[0]} failed: {(result.stdout + result.stderr)[-2000:]}")
        return result.stdout

    def start(self) -> None:
        # 3 logical CPUs on the head: room for both actors and a decoder once the worker is gone
        self.ray("start", "--head", "--node-ip-address", HEAD, "--port", str(self.port), "--num-cpus", "3",
                 "--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--include-dashboard", "false",
                 "--temp-dir", self.folder)
        self.start_worker()

    def start_worker(self) -> None:
        self.ray("start", "--address", self.address, "--node-ip-address", WORKER, "--num-cpus", "2",
                 "--object-store-memory", str(100 * 2**20), "--disable-usage-stats")
        deadline = time.monotonic() + 60
        while self.raylet(WORKER) is None or self.alive_nodes() < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker node did not join")
            time.sleep(1)

    def alive_nodes(self) -> int:
        return self.ray("status", "--address", self.address).split("Pending:")[0].count(" node_")

    def raylet(self, ip: str) -> psutil.Process | None:
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if cmdline and cmdline[0].endswith("raylet") and f"--node_ip_address={ip}" in cmdline \
                    and any(self.folder in part for part in cmdline):
                return process
        return None

    def actors_on(self, ip: str) -> list[psutil.Process]:
        raylet = self.raylet(ip)
        return [] if raylet is None else [p for p in raylet.children(recursive=True) if _title(p).startswith(ACTOR)]

    def kill_node(self, ip: str) -> None:
        """SIGKILL to the node's raylet and everything under it (its workers, actors, agents)."""
        raylet = self.raylet(ip)
        _kill([raylet, *raylet.children(recursive=True)])

    def processes(self) -> list[psutil.Process]:
        """Every process of the cluster: those started with its folder, and theirs."""
        ours = [p for p in psutil.process_iter(["cmdline"]) if any(self.folder in part for part in p.info["cmdline"] or [])]
        return ours + [child for process in ours for child in _children(process)]

    def stop(self) -> None:
        _kill(self.processes())


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()).strip()
    except psutil.Error:
        return ""


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
