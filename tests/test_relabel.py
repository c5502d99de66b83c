"""The relabel loop on the real sample photos: export, edit, `audit relabel`, originals kept,
idempotent, bad rows reported; the App's marks; Label Studio's export read back."""

import csv
import json
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from conftest import scan_sample
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.review.relabel import RelabelError, mark_samples, relabel_from_file
from audit.store import db

runner = CliRunner()
NAME = "relabel-sample"  # its own copy of the sample photos: other tests keep theirs untouched


@pytest.fixture(scope="module")
def dataset():
    return scan_sample(NAME)


def label_of(dataset, filename: str):
    """The sample of a sample photo (fresh from the database)."""
    return dataset.match(db.F("filepath").ends_with("/" + filename)).first()


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_round_trip_export_edit_relabel_originals_kept_then_a_no_op(dataset, tmp_path):
    exported = tmp_path / "relabel.csv"
    assert runner.invoke(app, ["export", NAME, "--out", str(exported)]).exit_code == 0
    rows = list(csv.DictReader(open(exported)))
    edited = {}
    for row in rows:
        name = Path(row["filepath"]).name
        if name == "camera.jpg":
            row["new_label"] = "Tripod"  # any case
            edited[name] = "tripod"
        elif name == "coffee.jpg":
            row["new_label"] = "n07920052"  # a WordNet id: espresso
            row["sample_id"] = ""  # matched by filepath instead
            edited[name] = "espresso"
    assert len(edited) == 2
    write_rows(exported, rows)

    result = runner.invoke(app, ["relabel", NAME, "--from", str(exported)])
    assert result.exit_code == 0, result.output
    assert "changed 2, already right 0" in result.stderr
    dataset.reload()
    for name, new in edited.items():
        sample = label_of(dataset, name)
        assert sample.ground_truth.label == new and sample.ground_truth.wnid  # an ImageNet class, resolved
        original = {"camera.jpg": "espresso", "coffee.jpg": "tripod"}[name]
        assert sample.ground_truth_original.label == original  # never lost
        [entry] = sample.relabel_history
        assert entry["from"] == original and entry["to"] == new and entry["who"] and entry["when"]
        assert entry["source"] == str(exported.resolve())
        assert "relabeled" in sample.tags and sample.audit_done is None  # the next scan judges it again
    untouched = label_of(dataset, "chelsea.jpg")
    assert untouched.ground_truth.label == "tiger cat" and not untouched["relabel_history"]

    again = runner.invoke(app, ["relabel", NAME, "--from", str(exported)])
    assert again.exit_code == 0 and "changed 0, already right 2" in again.stderr
    dataset.reload()
    assert all(len(label_of(dataset, name).relabel_history) == 1 for name in edited)

    # The next scan redoes exactly the relabelled samples, and they are no longer suspects.
    rescan = runner.invoke(app, ["scan", "sample", "--name", NAME, "--workers", "0"])
    assert rescan.exit_code == 0 and "scanned 2, already done 11" in rescan.stderr
    dataset.reload()
    for name in edited:
        assert label_of(dataset, name).category == "ok"


def test_bad_rows_are_reported_and_nothing_is_applied(dataset, tmp_path):
    shuttle = label_of(dataset, "astronaut_shuttle_model.jpg")
    bad = write_rows(tmp_path / "bad.csv", [
        {"sample_id": shuttle.id, "filepath": shuttle.filepath, "new_label": "space shuttle"},  # good
        {"sample_id": "000000000000000000000000", "filepath": "/nowhere/x.jpg", "new_label": "tabby"},
        {"sample_id": shuttle.id, "filepath": "", "new_label": "space shutle"},  # a typo
        {"sample_id": "", "filepath": "", "new_label": ""},  # empty: skipped, not a problem
    ])
    result = runner.invoke(app, ["relabel", NAME, "--from", str(bad)])
    assert result.exit_code == 1
    assert "bad.csv:3: no sample 000000000000000000000000" in result.stderr
    assert "bad.csv:4: 'space shutle' is not an ImageNet class (did you mean 'space shuttle'?)" in result.stderr
    assert "nothing changed" in result.stderr and "Traceback" not in result.stderr
    dataset.reload()
    assert label_of(dataset, "astronaut_shuttle_model.jpg").ground_truth.label == "goldfish"

    dry = runner.invoke(app, ["relabel", NAME, "--from", str(bad), "--dry-run"])
    assert dry.exit_code == 1 and "would change astronaut_shuttle_model.jpg: goldfish -> space shuttle" in dry.stderr

    applied = runner.invoke(app, ["relabel", NAME, "--from", str(bad), "--skip-invalid"])
    assert applied.exit_code == 0 and "changed 1" in applied.stderr and "problems 2" in applied.stderr
    dataset.reload()
    sample = label_of(dataset, "astronaut_shuttle_model.jpg")
    assert sample.ground_truth.label == "space shuttle" and sample.ground_truth_original.label == "goldfish"


def test_files_that_are_not_relabel_lists_fail_with_one_line(dataset, tmp_path):
    (tmp_path / "other.csv").write_text("filepath,label\na.jpg,cat\n")
    result = runner.invoke(app, ["relabel", NAME, "--from", str(tmp_path / "other.csv")])
    assert result.exit_code == 1 and "no new_label column" in result.stderr
    (tmp_path / "broken.json").write_text("[{")
    assert runner.invoke(app, ["relabel", NAME, "--from", str(tmp_path / "broken.json")]).exit_code == 1
    assert runner.invoke(app, ["relabel", NAME]).exit_code == 2  # neither --from nor --from-app
    with pytest.raises(RelabelError):
        relabel_from_file(dataset, tmp_path / "missing.csv")


def test_marks_made_in_the_app_are_applied(dataset):
    tower = label_of(dataset, "china_tower.jpg")
    lake = label_of(dataset, "china_lake.jpg")
    with pytest.raises(RelabelError, match="not an ImageNet class"):
        mark_samples(dataset, [tower.id], "relabel", new_label="bell cotte")
    assert mark_samples(dataset, [tower.id], "relabel", new_label="bell cote") == 1
    assert mark_samples(dataset, [lake.id], "label_ok") == 1
    result = runner.invoke(app, ["relabel", NAME, "--from-app"])
    assert result.exit_code == 0, result.output
    assert "changed 1" in result.stderr
    dataset.reload()
    tower = label_of(dataset, "china_tower.jpg")
    assert tower.ground_truth.label == "bell cote" and tower.ground_truth_original.label == "palace"
    assert tower.relabel_history[-1]["source"] == "app-marks"
    assert "relabel" not in tower.tags and "relabeled" in tower.tags
    assert "label_ok" in label_of(dataset, "china_lake.jpg").tags
    again = runner.invoke(app, ["relabel", NAME, "--from-app"])
    assert again.exit_code == 0 and "changed 0" in again.stderr


def test_json_jsonl_and_label_studio_exports_read_back(dataset, tmp_path):
    rocket = label_of(dataset, "rocket.jpg")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"sample_id": rocket.id, "new_label": "projectile"}) + "\n")
    assert runner.invoke(app, ["relabel", NAME, "--from", str(tmp_path / "rows.jsonl")]).exit_code == 0
    dataset.reload()
    assert label_of(dataset, "rocket.jpg").ground_truth.label == "projectile"

    tasks_path = tmp_path / "tasks.json"
    result = runner.invoke(app, ["export", NAME, "--out", str(tasks_path), "--format", "labelstudio", "--all"])
    assert result.exit_code == 0, result.output
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == len(dataset)
    task = next(t for t in tasks if t["data"]["filepath"].endswith("rocket.jpg"))
    assert task["data"]["image"] == "/data/local-files/?d=sample_data/rocket.jpg"  # under the folder above
    assert task["predictions"][0]["result"][0]["value"]["choices"] == ["projectile"]  # the given label
    assert {"value": "missile"} in task["data"]["options"]  # the model's top labels are offered
    assert task["data"]["reasons"] and "category" in task["data"]

    # What Label Studio exports once an annotator picked a choice (full JSON) or typed another label.
    task["annotations"] = [{"result": [{"from_name": "new_label", "to_name": "image", "type": "choices",
                                        "value": {"choices": ["missile"]}}], "was_cancelled": False,
                            "updated_at": "2026-01-01T10:00:00Z"}]
    lake = next(t for t in tasks if t["data"]["filepath"].endswith("china_lake.jpg"))
    lake["annotations"] = [{"result": [{"from_name": "new_label_other", "to_name": "image", "type": "textarea",
                                        "value": {"text": ["seashore"]}}], "was_cancelled": False}]
    tasks_path.write_text(json.dumps(tasks))
    applied = runner.invoke(app, ["relabel", NAME, "--from", str(tasks_path)])
    assert applied.exit_code == 0, applied.output
    dataset.reload()
    assert label_of(dataset, "rocket.jpg").ground_truth.label == "missile"
    assert [e["to"] for e in label_of(dataset, "rocket.jpg").relabel_history] == ["projectile", "missile"]
    assert label_of(dataset, "rocket.jpg").ground_truth_original.label == "missile"  # the very first label
    assert label_of(dataset, "china_lake.jpg").ground_truth.label == "seashore"

    outside = runner.invoke(app, ["export", NAME, "--out", str(tmp_path / "t2.json"), "--format", "labelstudio",
                                  "--all", "--document-root", str(tmp_path)])
    assert outside.exit_code == 1 and "not under the document root" in outside.stderr


def test_label_studio_tasks_keep_label_studios_local_files_rules(dataset, tmp_path):
    """Label Studio 1.23 (io_storages/localfiles): a Local files storage must lie strictly below
    LOCAL_FILES_DOCUMENT_ROOT, and a file is served only from within a storage."""
    tasks_path = tmp_path / "tasks.json"
    result = runner.invoke(app, ["export", NAME, "--out", str(tasks_path), "--format", "labelstudio", "--all"])
    assert result.exit_code == 0, result.output
    said = next(line for line in result.stderr.splitlines() if line.startswith("Label Studio:"))
    root = Path(said.split("LOCAL_FILES_DOCUMENT_ROOT=")[1].split(",")[0])
    storage = Path(said.split("the absolute path ")[1].split(" (no sync)")[0])
    assert storage.is_dir() and root in storage.parents  # strictly below: never the root itself
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == len(dataset)
    for task in tasks:
        url = urlparse(task["data"]["image"])
        assert url.path == "/data/local-files/"
        served = root / unquote(parse_qs(url.query)["d"][0])
        assert served.is_file() and served == Path(task["data"]["filepath"]).resolve()
        assert storage == served.parent or storage in served.parent.parents  # within the storage
        for key in ("predicted_confidence", "options", "summary"):  # fields the labelling view reads
            assert key in task["data"]

    at_the_images = runner.invoke(app, ["export", NAME, "--out", str(tmp_path / "t3.json"), "--format",
                                        "labelstudio", "--all", "--document-root", str(storage)])
    assert at_the_images.exit_code == 1 and not (tmp_path / "t3.json").exists()
    assert f"pass --document-root {storage.parent}" in at_the_images.stderr


def test_new_labels_of_a_non_imagenet_dataset_must_be_known(tmp_path):
    photo = next(iter(Path(db.settings.SAMPLE_DATA_DIR).glob("*.jpg")))
    fo = db.fo
    dataset = fo.Dataset("own-classes")
    sample = fo.Sample(filepath=str(photo), ground_truth=fo.Classification(label="good"))
    other = fo.Sample(filepath=str(tmp_path / "b.jpg"), ground_truth=fo.Classification(label="bad"))
    dataset.add_samples([sample, other])
    rows = write_rows(tmp_path / "fix.csv", [{"sample_id": sample.id, "new_label": "bad"},
                                             {"sample_id": other.id, "new_label": "ugly"}])
    result = relabel_from_file(dataset, rows)
    assert not result.applied and any("'ugly' is not a label of this dataset" in p for p in result.problems)
    result = relabel_from_file(dataset, rows, allow_new_labels=True)
    assert result.applied and len(result.changed) == 2
    dataset.reload()
    assert sorted(dataset.values("ground_truth.label")) == ["bad", "ugly"]
    assert not dataset.first().ground_truth.has_field("wnid")  # stored as given, not as an ImageNet class


def test_plugin_operators_mark_export_and_run_the_audit(dataset, tmp_path, monkeypatch):
    """The App plugin's operators, executed as the App executes them."""
    import fiftyone.operators as foo

    from audit.review.app import PLUGINS_DIR

    monkeypatch.setattr(db.fo.config, "plugins_dir", str(PLUGINS_DIR))
    motorcycle = label_of(dataset, "motorcycle.jpg")
    foo.execute_operator("@audit/audit/mark_relabel", dataset=dataset, selected=[motorcycle.id],
                         params={"new_label": "scooter"}).raise_exceptions()
    dataset.reload()
    marked = label_of(dataset, "motorcycle.jpg")
    assert "relabel" in marked.tags and marked.relabel_to == "motor scooter"  # resolved to the class name

    out = tmp_path / "view.csv"
    foo.execute_operator("@audit/audit/export_relabel_list", view=dataset.match_tags("relabel"),
                         params={"path": str(out), "format": "csv", "everything": True}).raise_exceptions()
    rows = list(csv.DictReader(open(out)))
    assert [(Path(r["filepath"]).name, r["new_label"]) for r in rows] == [("motorcycle.jpg", "motor scooter")]

    before = label_of(dataset, "motorcycle.jpg").audit_done
    dataset.set_values(names.SCORE, {motorcycle.id: None}, key_field="id")
    result = foo.execute_operator("@audit/audit/run_audit", view=dataset.select([motorcycle.id]),
                                  params={"model": "efficientnet_lite0", "redo": True})
    result.raise_exceptions()
    dataset.reload()
    rescanned = label_of(dataset, "motorcycle.jpg")
    assert rescanned.audit_done == before and rescanned.mislabel_score is not None  # scanned and re-scored
    assert Path(rescanned.eigencam.map_path).parent.name == NAME  # the maps of the view's dataset
