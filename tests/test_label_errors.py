"""How many labels are wrong, and a review queue sized to it (audit.score.estimate): on the sample
photos scanned by the real model, with labels a test flips, and on the same photos labelled right."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from PIL import Image, ImageOps
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.review.report import build_report
from audit.score.estimate import QUEUE_FROM, LabelErrors, estimate_label_errors
from audit.store import db

RUNNER = CliRunner()
# The labels a test gives four of the sample photos instead of their right ones: photos the model sees
# clearly (its top class at 0.55 or more), given a look-alike class or an unrelated one. A wrong label
# on a photo the model is unsure of is one it cannot see (docs/label-errors.md).
FLIPS = {"coffee.jpg": "teapot", "camera.jpg": "goldfish", "motorcycle.jpg": "lakeside", "hopper_tie.jpg": "palace"}


def _rows() -> list[dict]:
    with open(SAMPLE_DATA / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _scan(tmp_path, name: str, flips: dict[str, str]):
    """The sample photos (copied with their mirror images: 26 photos) under their right labels but
    ``flips``, scanned by the embedded model; the dataset."""
    folder = tmp_path / name
    folder.mkdir()
    rows = []
    for row in _rows():
        photo = SAMPLE_DATA / row["filepath"]
        shutil.copy(photo, folder / photo.name)
        rows.append((folder / photo.name, flips.get(photo.name, row["correct_label"])))
        mirrored = folder / f"mirrored_{photo.name}"
        ImageOps.mirror(Image.open(photo).convert("RGB")).save(mirrored, quality=92)
        rows.append((mirrored, row["correct_label"]))
    table = folder / "labels.csv"
    table.write_text("filepath,label\n" + "".join(f"{path},{label}\n" for path, label in rows))
    result = RUNNER.invoke(app, ["scan", "csv", "--root", str(table), "--name", name, "--workers", "0"])
    assert result.exit_code == 0, result.output
    return db.load_dataset(name), result.output


@pytest.fixture(scope="module")
def flipped(tmp_path_factory, one_torch_thread):
    return _scan(tmp_path_factory.mktemp("flipped"), "label-errors-flipped", FLIPS)


def test_the_estimate_of_flipped_labels_holds_their_number_and_the_queue_holds_them(flipped):
    dataset, output = flipped
    errors = LabelErrors.read(db.audit_info(dataset)["label_errors"])
    assert errors.labelled == len(dataset) == 26
    assert errors.low <= len(FLIPS) <= errors.high, errors.stored()
    assert "label errors: about" in output  # the scan's summary says it
    queue = dataset.match(db.F(names.CATEGORY) == names.SUSPECTED_MISLABEL)
    flipped_photos = {path.rsplit("/", 1)[-1] for path in queue.values("filepath")}
    assert set(FLIPS) <= flipped_photos and len(queue) == errors.queue <= len(FLIPS) + 1
    scores = dict(zip(*dataset.values(["filepath", names.SCORE])))
    assert all(scores[path] >= QUEUE_FROM for path in queue.values("filepath"))
    # calibrated, not the raw margin: the clear labels score near 0
    assert np.median(list(scores.values())) < 0.05


def test_the_per_class_table_names_what_a_wrong_label_should_be(flipped):
    dataset, _ = flipped
    per_class = db.audit_info(dataset)["label_errors"]["per_class"]
    assert per_class["teapot"]["wrong"] >= 0.5 and "espresso" in per_class["teapot"]["should_be"]  # the coffee photo
    assert per_class["espresso"]["wrong"] < 0.5
    table = build_report(dataset).split("Classes whose labels are most often wrong", 1)[1].split("</table>", 1)[0]
    should_be = re.findall(r"<td>([^<]*)</td></tr>", table)
    assert any("espresso" in cell for cell in should_be)
    assert all(int(count) >= 1 for cell in should_be for count in re.findall(r" (\d+)(?:,|$)", cell))  # no "ship 0"


def test_rank_shows_the_estimate_above_the_table_and_a_rescore_keeps_it(flipped):
    dataset, _ = flipped
    before = db.audit_info(dataset)["label_errors"]
    result = RUNNER.invoke(app, ["rank", dataset.name, "--rescore", "--top", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.lstrip().startswith("label errors: about")
    assert db.audit_info(dataset)["label_errors"] == before


def test_eval_labels_sets_the_estimate_and_the_queue_against_a_truth(flipped, tmp_path):
    dataset, _ = flipped
    truth = tmp_path / "truth.csv"
    truth.write_text("filepath,label_error\n" + "".join(f"{path},{int(path.rsplit('/', 1)[-1] in FLIPS)}\n"
                                                       for path in dataset.values("filepath")))
    result = RUNNER.invoke(app, ["eval-labels", dataset.name, "--truth", str(truth), "--json"])
    assert result.exit_code == 0, result.output
    queue = json.loads(result.output)["queue"]
    assert queue["errors"] == len(FLIPS) and queue["recall"] == 1.0 and queue["f1"] <= queue["best_f1"]
    assert abs(queue["estimate"] - len(FLIPS)) <= 2


def test_a_relabelled_sample_leaves_the_queue_by_the_stored_calibration(flipped, tmp_path):
    dataset, _ = flipped
    camera = dataset.match(db.F("filepath").ends_with("/camera.jpg")).first()
    assert camera[names.CATEGORY] == names.SUSPECTED_MISLABEL and camera[names.SUGGESTED] == "tripod"
    table = tmp_path / "fix.csv"
    table.write_text(f"id,filepath,new_label\n{camera.id},{camera.filepath},tripod\n")
    result = RUNNER.invoke(app, ["relabel", dataset.name, "--from", str(table)])
    assert result.exit_code == 0, result.output
    camera.reload()
    assert camera[names.CATEGORY] != names.SUSPECTED_MISLABEL and camera[names.SCORE] < QUEUE_FROM


def test_right_labels_get_a_near_empty_queue(tmp_path, one_torch_thread):
    dataset, _ = _scan(tmp_path, "label-errors-clean", {})
    errors = LabelErrors.read(db.audit_info(dataset)["label_errors"])
    assert errors.estimate <= 2 and errors.queue <= 1, errors.stored()
    assert dataset.count_values(names.CATEGORY).get(names.SUSPECTED_MISLABEL, 0) == errors.queue


def test_labels_that_all_agree_with_the_head_are_estimated_right_and_the_order_is_kept():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 500)
    raw = rng.uniform(0.0, 0.4, 500)
    errors, calibrated = estimate_label_errors(confidence=confidence, agrees=np.ones(500, bool), raw_scores=raw,
                                               given=["a"] * 500, top=["a"] * 500)
    assert (errors.estimate, errors.low, errors.high, errors.queue) == (0, 0, 0, 0)
    assert np.all(np.diff(calibrated[np.argsort(raw)]) > 0)  # strictly increasing in the raw score: ties none

