"""Each operator of the App's plugin, executed as the App executes it, meets a failure the audit
explains (a refused lock, a missing model, a bad label, a file it must not replace): the App gets an
error notification with the one line, not a traceback."""

import pytest
from conftest import scan_sample
from typer.testing import CliRunner

from audit.store import db
from audit.store.lock import ScanLock

runner = CliRunner()
NAME = "plugin-errors"


@pytest.fixture(scope="module")
def dataset():
    return scan_sample(NAME)


def held(dataset, doing: str = "scanned"):
    """The dataset's scan lock, held by this process as another scan (or relabel) would hold it."""
    return ScanLock(dataset.name, doing=doing).acquire()


def test_run_audit_refused_by_a_running_scan_is_a_notification(dataset, execute):
    lock = held(dataset)
    try:
        _, notes = execute("run_audit", view=dataset.limit(1), params={"model": "efficientnet_lite0", "redo": True})
    finally:
        lock.release()
    assert [n["variant"] for n in notes] == ["error"] and "is being scanned by pid" in notes[0]["message"]


def test_run_audit_with_a_missing_model_is_a_notification(dataset, execute):
    _, notes = execute("run_audit", view=dataset.limit(1), params={"model": "no_such_model"})
    assert [n["variant"] for n in notes] == ["error"] and "no_such_model" in notes[0]["message"]


def test_apply_relabel_marks_refused_by_a_running_scan_is_a_notification(dataset, execute):
    from audit.review.relabel import mark_samples

    camera = dataset.match(db.F("filepath").ends_with("/camera.jpg")).first()
    mark_samples(dataset, [camera.id], "relabel", new_label="tripod")
    lock = held(dataset)
    try:
        result, notes = execute("apply_relabel_marks", dataset=dataset)
    finally:
        lock.release()
    assert "nothing relabelled" in result["error"] and notes[0]["variant"] == "error"
    dataset.reload()
    assert dataset[camera.id].ground_truth.label == "espresso"  # nothing half-applied


def test_mark_relabel_with_a_label_that_is_no_class_is_a_notification(dataset, execute):
    camera = dataset.match(db.F("filepath").ends_with("/camera.jpg")).first()
    result, notes = execute("mark_relabel", dataset=dataset, selected=[camera.id], params={"new_label": "tripd"})
    assert "'tripd' is not an ImageNet class" in result["error"] and notes[0]["variant"] == "error"


def test_export_that_would_replace_a_file_is_a_notification(dataset, execute, tmp_path):
    kept = tmp_path / "mine.csv"
    kept.write_text("a reviewer's work\n")
    result, notes = execute("export_relabel_list", view=dataset.view(), params={"path": str(kept), "format": "csv"})
    assert "exists" in result["error"] and notes[0]["variant"] == "error"
    assert kept.read_text() == "a reviewer's work\n"


def test_mark_label_ok_reports_success(dataset, execute):
    """The one operator without a failure of its own (tags only, no lock, no model)."""
    lake = dataset.match(db.F("filepath").ends_with("/china_lake.jpg")).first()
    result, notes = execute("mark_label_ok", dataset=dataset, selected=[lake.id])
    assert result == {"marked": 1} and notes[0]["variant"] == "success"
