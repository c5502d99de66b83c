"""The review loop as a user meets it, through the installed `audit` program and a real database:
a dry run says what the real run would do and fails where it would; a relabelled sample is judged
for its new label at once, not left with the verdict of the old one."""

import csv
import json
from pathlib import Path

import pytest
from test_bad_inputs import run_audit

NAME = "review-program"  # its own copy of the sample photos


@pytest.fixture(scope="module")
def scanned():
    ran = run_audit("scan", "sample", "--name", NAME, "--workers", "0")
    assert ran.returncode == 0, ran.stderr
    return NAME


def ranked(name: str, *extra: str) -> dict[str, dict]:
    ran = run_audit("rank", name, "--json", "--top", "100", *extra)
    assert ran.returncode == 0, ran.stderr
    return {Path(row["filepath"]).name: row for row in json.loads(ran.stdout)}


def every_row(name: str, out: Path) -> dict[str, dict]:
    ran = run_audit("export", name, "--out", str(out), "--all", "--overwrite")
    assert ran.returncode == 0, ran.stderr
    return {Path(row["filepath"]).name: row for row in csv.DictReader(open(out))}


def relabel_list(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sample_id", "filepath", "new_label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_dry_run_says_what_the_real_run_says_and_fails_where_it_fails(scanned, tmp_path):
    rows = every_row(scanned, tmp_path / "all.csv")
    camera = rows["camera.jpg"]
    good = [{"sample_id": camera["sample_id"], "filepath": "", "new_label": "tripod"}]
    bad = good + [{"sample_id": "", "filepath": "/nowhere/x.jpg", "new_label": "tabby"}]

    dry_bad = run_audit("relabel", scanned, "--from", str(relabel_list(tmp_path / "bad.csv", bad)), "--dry-run")
    real_bad = run_audit("relabel", scanned, "--from", str(tmp_path / "bad.csv"))
    for ran in (dry_bad, real_bad):
        assert ran.returncode == 1, ran.stderr  # a script can use the dry run as its check
        assert "problem: bad.csv:3: no sample /nowhere/x.jpg" in ran.stderr and "Traceback" not in ran.stderr
        assert "camera.jpg: espresso -> tripod" in ran.stderr  # the file and the old label, not a sample id
    assert "a real run would change nothing" in dry_bad.stderr and "nothing changed" in real_bad.stderr

    dry = run_audit("relabel", scanned, "--from", str(relabel_list(tmp_path / "good.csv", good)), "--dry-run")
    assert dry.returncode == 0 and "would change camera.jpg: espresso -> tripod" in dry.stderr
    assert every_row(scanned, tmp_path / "after-dry.csv")["camera.jpg"]["given_label"] == "espresso"  # unchanged


def test_a_relabelled_sample_is_judged_for_its_new_label_at_once(scanned, tmp_path):
    before = ranked(scanned)
    assert before["camera.jpg"]["category"] == "suspected_mislabel"
    rows = every_row(scanned, tmp_path / "all.csv")
    sure = max((row for row in rows.values() if row["category"] == "ok"),
               key=lambda row: float(row["predicted_confidence"]))  # a right label the model is sure of
    name, label = Path(sure["filepath"]).name, sure["given_label"]
    fixes = relabel_list(tmp_path / "fix.csv", [
        {"sample_id": rows["camera.jpg"]["sample_id"], "filepath": "", "new_label": "tripod"},  # the model agrees
        {"sample_id": sure["sample_id"], "filepath": "", "new_label": "goldfish"},  # a new error
    ])
    applied = run_audit("relabel", scanned, "--from", str(fixes))
    assert applied.returncode == 0, applied.stderr
    assert "changed camera.jpg: espresso -> tripod" in applied.stderr

    after = every_row(scanned, tmp_path / "after.csv")
    camera, wrong = after["camera.jpg"], after[name]
    assert camera["given_label"] == "tripod" and camera["category"] == "ok"  # no stale suspected_mislabel
    assert float(camera["mislabel_score"]) < 0.5 < float(before["camera.jpg"]["mislabel_score"])
    assert "camera.jpg" not in ranked(scanned)  # no longer flagged in the table, the App's views or the report
    assert wrong["category"] == "suspected_mislabel" and wrong["suggested_label"] == label
    assert f"relabelled from '{label}' after the scan" in wrong["reasons"]
    assert "'goldfish' below" in wrong["reasons"]  # not among the stored top classes: a bound, said so
    assert ranked(scanned, "--rescore")[name]["category"] == "suspected_mislabel"  # rescoring agrees

    rescan = run_audit("scan", "sample", "--name", scanned, "--workers", "0")
    assert rescan.returncode == 0 and "scanned 2, already done 11" in rescan.stderr
    judged = every_row(scanned, tmp_path / "rescanned.csv")
    assert "relabelled from" not in judged[name]["reasons"]  # judged on every view again
    assert judged[name]["category"] == "suspected_mislabel" and judged["camera.jpg"]["category"] == "ok"
