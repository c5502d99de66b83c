"""`audit scan sample` end to end: the real model on the real sample photos, a real database."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from conftest import SAMPLE_DATA
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.store import db

runner = CliRunner()


def deliberately_wrong() -> dict[str, str]:
    """File name -> the correct class, for the sample photos labelled wrong on purpose."""
    with open(SAMPLE_DATA / "labels.csv", newline="") as handle:
        return {Path(r["filepath"]).name: r["correct_label"] for r in csv.DictReader(handle)
                if r["label"] != r["correct_label"]}


def audit_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console script in a subprocess, for true exit codes and stderr."""
    return subprocess.run([str(Path(sys.executable).parent / "audit"), *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)


@pytest.fixture(scope="module")
def scanned():
    result = runner.invoke(app, ["scan", "sample", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return db.load_dataset("sample"), result


def test_every_sample_gets_prediction_map_box_and_verdict(scanned):
    dataset, _ = scanned
    assert len(dataset) == len(list(csv.DictReader(open(SAMPLE_DATA / "labels.csv"))))
    for sample in dataset:
        assert sample.predictions.label and 0 < sample.predictions.confidence <= 1
        heat = cv2.imread(sample.eigencam.map_path, cv2.IMREAD_GRAYSCALE)
        # The map is in the original image's frame: same aspect ratio as the photo.
        assert heat is not None and heat.max() == 255
        assert abs(heat.shape[1] / heat.shape[0] - sample.metadata.width / sample.metadata.height) < 0.05
        assert len(sample.eigencam_box.detections) == 1
        assert sample.category in names.CATEGORIES and 0 <= sample.mislabel_score <= 1
        assert sample.audit_done


def test_the_deliberately_mislabelled_photos_top_the_ranking(scanned):
    dataset, result = scanned
    wrong = deliberately_wrong()
    assert 2 <= len(wrong) <= 3
    top = db.flagged_view(dataset).limit(len(wrong))
    assert {Path(p).name for p in top.values("filepath")} == set(wrong)
    for sample in top:
        assert sample.category == "suspected_mislabel"
        assert sample.suggested_label == wrong[Path(sample.filepath).name]
        assert any("no evidence" in reason for reason in sample.reasons)
    assert "audit-flagged" in dataset.list_saved_views() and len(dataset.match_tags("audit-flagged")) > 0
    for category, name in names.CATEGORY_VIEWS.items():  # a tag and a saved view per category, in step
        expected = set(dataset.match(db.F(names.CATEGORY) == category).values("id"))
        assert set(dataset.load_saved_view(name).values("id")) == expected == set(dataset.match_tags(name).values("id"))
    assert len(dataset.load_saved_view("audit-mislabels")) == len(wrong)
    for name in wrong:  # the printed table names them
        assert name in result.stdout


def test_a_second_scan_resumes_and_does_nothing(scanned):
    result = runner.invoke(app, ["scan", "sample", "--workers", "0"])
    assert result.exit_code == 0
    assert "scanned 0, already done" in result.stderr


def test_export_columns_order_and_no_overwrite(scanned, tmp_path):
    dataset, _ = scanned
    out = tmp_path / "relabel.csv"
    assert runner.invoke(app, ["export", "sample", "--out", str(out), "--all"]).exit_code == 0
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["sample_id", "filepath", "given_label", "predicted_label", "predicted_confidence",
                             "suggested_label", "category", "mislabel_score", "reasons", "new_label"]
    assert len(rows) == len(dataset)
    scores = [float(r["mislabel_score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(r["new_label"] == "" for r in rows)
    before = out.read_bytes()
    again = audit_cli("export", "sample", "--out", str(out))
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    assert out.read_bytes() == before
    jsonl = tmp_path / "flagged.jsonl"
    assert runner.invoke(app, ["export", "sample", "--out", str(jsonl), "--format", "jsonl"]).exit_code == 0
    flagged = [json.loads(line) for line in open(jsonl)]
    assert len(flagged) == len(db.flagged_view(dataset)) and isinstance(flagged[0]["reasons"], list)


def test_rank_json_is_the_flagged_rows(scanned):
    result = runner.invoke(app, ["rank", "sample", "--json", "--top", "3"])
    rows = json.loads(result.stdout)
    assert result.exit_code == 0 and len(rows) == 3 and rows[0]["mislabel_score"] >= rows[-1]["mislabel_score"]


# Unreadable images (zero bytes, text named .jpg, truncated, ...): tests/test_bad_inputs.py.


def test_rank_rescore_follows_the_scoring_policy_without_the_model(scanned, monkeypatch):
    """The consensus of the second opinions is formed when scoring, from the stored signals: a
    changed NEUTRAL_VIEWS changes the scores of the samples with views at `audit rank --rescore`."""
    import audit.score.policy

    dataset, _ = scanned
    with_views = dataset.exists(f"{names.SIGNALS}.views")
    before = dict(zip(*with_views.values(["id", names.SCORE])))
    assert before  # the photos in doubt got second opinions
    monkeypatch.setattr(audit.score.policy, "NEUTRAL_VIEWS", ())  # the whole image alone, and the label's testimony
    assert runner.invoke(app, ["rank", "sample", "--rescore"]).exit_code == 0
    after = dict(zip(*with_views.values(["id", names.SCORE])))
    assert any(abs(after[i] - before[i]) > 1e-3 for i in before)
    monkeypatch.undo()
    assert runner.invoke(app, ["rank", "sample", "--rescore"]).exit_code == 0
    assert dict(zip(*with_views.values(["id", names.SCORE]))) == pytest.approx(before)


def test_usage_errors_exit_2_and_failures_exit_1_with_one_line():
    wrong_option = audit_cli("rank", "sample", "--no-such-option")
    assert wrong_option.returncode == 2
    missing = audit_cli("rank", "no-such-dataset")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == "error: no dataset named 'no-such-dataset'; `audit datasets` lists them"
    bad_source = audit_cli("scan", "folder")
    assert bad_source.returncode == 1 and bad_source.stderr.strip().count("\n") == 0
    for command in ("scan", "rank", "export", "datasets", "delete", "models"):
        assert audit_cli(command, "--help").returncode == 0


def test_delete_asks_unless_yes(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text(f"filepath,label\n{next(iter(SAMPLE_DATA.glob('*.jpg')))},tabby\n")
    assert runner.invoke(app, ["scan", "csv", "--root", str(table), "--name", "doomed", "--workers", "0"]).exit_code == 0
    refused = audit_cli("delete", "doomed")
    assert refused.returncode != 0 and "doomed" in db.list_datasets()
    assert runner.invoke(app, ["delete", "doomed", "--yes"]).exit_code == 0
    assert "doomed" not in db.list_datasets()
