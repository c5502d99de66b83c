"""Every test session gets its own throwaway FiftyOne database and dataset folder, set before
FiftyOne is imported: the user's database is never touched."""

import tempfile
from pathlib import Path

import pytest
from throwaway_db import start_throwaway_database

# A mongod of our own before FiftyOne is imported: never the user's database (FiftyOne would attach
# to any database service already running, whatever FIFTYONE_DATABASE_DIR says).
start_throwaway_database(Path(tempfile.mkdtemp(prefix="audit-tests-")))

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one thread is as fast, and immune to OpenMP oversubscription on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedded_model():
    """The real embedded EfficientNet-Lite0, loaded once per session on the CPU."""
    from audit.models.registry import load_model

    return load_model("efficientnet_lite0", device="cpu")


def scan_sample(name: str):
    """The sample photos scanned (in this process) into a dataset of their own, so that a test module
    may change it while other modules keep theirs untouched; returns the dataset."""
    from typer.testing import CliRunner

    from audit.cli import app
    from audit.store import db

    result = CliRunner().invoke(app, ["scan", "sample", "--name", name, "--workers", "0"])
    assert result.exit_code == 0, result.output
    return db.load_dataset(name)


@pytest.fixture
def execute(monkeypatch):
    """execute(operator, **kwargs) -> (the operator's result, the notifications it sent): the App's
    plugin operator run as the App runs it."""
    import fiftyone.operators as foo

    from audit.review.app import PLUGINS_DIR
    from audit.store import db

    monkeypatch.setattr(db.fo.config, "plugins_dir", str(PLUGINS_DIR))

    def run(operator: str, **kwargs):
        executed = foo.execute_operator(f"@audit/audit/{operator}", **kwargs)
        executed.raise_exceptions()  # a traceback in the App would be an exception here
        messages = executed.result if isinstance(executed.result, list) else []
        sent = [*executed.executor.to_json()["requests"], *(m.body.to_json() for m in messages if m.body)]
        notes = [r["params"] for r in sent if r.get("operator_uri", "").endswith("notify")]
        return executed.result, notes

    return run
