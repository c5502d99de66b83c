"""`audit report`: one self-contained HTML page of the top flagged samples."""

import base64
import re

import numpy as np
import pytest
from conftest import SAMPLE_DATA, scan_sample
from PIL import Image
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.review.render import MIN_SIDE, overlay
from audit.review.report import build_report, summary_figures
from audit.store import db

runner = CliRunner()
NAME = "report-sample"


@pytest.fixture(scope="module")
def dataset():
    return scan_sample(NAME)


def test_report_is_self_contained_small_and_ranked(dataset, tmp_path):
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", NAME, "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    flagged = db.flagged_view(dataset)
    assert page.count('<section class="card">') == len(flagged)
    images = re.findall(r'<img src="([^"]+)"', page)
    # the photo, the photo with Eigen-CAM and box, and where the label's evidence is when the model disagrees
    disagreeing = sum(sample.predictions.label != sample.ground_truth.label for sample in flagged)
    assert disagreeing and len(images) == 2 * len(flagged) + disagreeing
    assert page.count("where the model sees most of") == disagreeing
    assert all(src.startswith("data:image/jpeg;base64,") for src in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:2] == b"\xff\xd8"  # a real JPEG
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    assert "<svg" in page and out.stat().st_size < 1_500_000
    names = [name for name in re.findall(r'</span> ([\w.]+\.jpg) <span class="badge"', page)]
    assert names[:3] and set(names[:3]) == {"camera.jpg", "coffee.jpg", "astronaut_shuttle_model.jpg"}
    assert "no evidence for &#x27;espresso&#x27;" in page  # the reasons, escaped
    assert out.stat().st_mode & 0o044  # readable by others like any file the user writes


def test_report_refuses_to_overwrite_unless_asked(dataset, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("keep me")
    refused = runner.invoke(app, ["report", NAME, "--out", str(out)])
    assert refused.exit_code == 1 and "--overwrite" in refused.stderr and out.read_text() == "keep me"
    assert runner.invoke(app, ["report", NAME, "--out", str(out), "--overwrite", "--top", "2"]).exit_code == 0
    assert out.read_text().count('<section class="card">') == 2
    missing = runner.invoke(app, ["report", NAME, "--out", str(tmp_path / "no" / "such" / "dir.html")])
    assert missing.exit_code == 1 and "folder not found" in missing.stderr


def test_summary_figures_count_every_category_and_score(dataset):
    figures = summary_figures(dataset)
    assert figures["scanned"] == len(dataset) == sum(c["count"] for c in figures["categories"])
    assert figures["flagged"] == len(db.flagged_view(dataset))
    assert sum(figures["histogram"]["counts"]) == len(dataset.exists(names.SCORE))
    assert len(figures["histogram"]["edges"]) == 21
    view = summary_figures(dataset.match(db.F(names.CATEGORY) == "suspected_mislabel"))
    assert [c["category"] for c in view["categories"]] == ["suspected_mislabel"]


def test_a_dataset_never_scanned_still_gets_a_page():
    fo = db.fo
    dataset = fo.Dataset("never-scanned")
    dataset.add_sample(fo.Sample(filepath="/nowhere.jpg"))
    page = build_report(dataset)
    assert "Nothing flagged" in page and "<html" in page


def test_a_32_pixel_photo_is_drawn_enlarged_and_its_box_leaves_it_visible(tmp_path):
    small = tmp_path / "small.jpg"
    with Image.open(SAMPLE_DATA / "chelsea.jpg") as photo:
        photo.convert("RGB").resize((32, 24)).save(small, quality=95)
    plain = overlay(str(small), None, {})
    boxed = overlay(str(small), None, {"eigencam": [[0.25, 0.25, 0.5, 0.5]]})
    assert plain.shape == boxed.shape == (MIN_SIDE * 24 // 32, MIN_SIDE, 3)
    inside, outline = boxed[50:70, 70:90], boxed[28:32, 40:120]  # the box runs from (40, 30) to (120, 90)
    assert np.array_equal(inside, plain[50:70, 70:90])  # the photo shows within the box
    assert (outline.reshape(-1, 3) == 255).all(axis=1).mean() > 0.2 and not np.array_equal(outline, plain[28:32, 40:120])
