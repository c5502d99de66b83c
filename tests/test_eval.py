"""eval-loc and eval-labels on a real scan of a small Kaggle-layout fixture (real photos, boxes)."""

import json
from pathlib import Path

import fiftyone as fo
import pytest
from imagenet_fixtures import SAMPLES, build_kaggle, write_photos
from typer.testing import CliRunner

from audit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    photos = tmp_path_factory.mktemp("eval-photos")
    write_photos(photos)
    root = build_kaggle(tmp_path_factory.mktemp("eval-kaggle"), photos)
    result = runner.invoke(app, ["scan", "imagenet-val", "--root", str(root), "--name", "eval-fixture", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return root


def test_eval_loc_reports_the_papers_figures_for_each_map(scanned):
    result = runner.invoke(app, ["eval-loc", "eval-fixture", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == len(SAMPLES)
    assert 0 <= report["gt_known_loc_error"] <= report["top1_loc_error"] <= 100
    assert set(report["sweep"]) == {"eigencam", "fused", "gradcam"}
    # The photos' objects are large and central: Eigen-CAM finds most of them at some threshold.
    assert min(r["gt_known_loc_error"] for r in report["sweep"]["eigencam"].values()) <= 50


def test_eval_labels_ranks_a_known_error_first(scanned, tmp_path):
    # Call the astronaut photo (labelled 'military uniform' in the fixture) a verified error, the tabby fine.
    truth = tmp_path / "verified.csv"
    truth.write_text("ImageId,verdict\nILSVRC2012_val_00000003,label_error_guessed\nILSVRC2012_val_00000001,label_ok\n")
    result = runner.invoke(app, ["eval-labels", "eval-fixture", "--truth", str(truth), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == len(SAMPLES) and report["n_errors"] == 1
    assert set(report["baselines"]) == {"self_confidence", "normalized_margin"}
    assert 0 <= report["auroc"] <= 1 and "precision_at" in report


def test_eval_labels_counts_the_errors_the_model_agrees_with(scanned, tmp_path):
    # Call one photo whose label the model predicts too an error, beside the disputed astronaut.
    filepaths, signals = fo.load_dataset("eval-fixture").values(["filepath", "audit_signals"])
    agreed = next(Path(f).stem for f, s in zip(filepaths, signals) if s["pred_index"] == s["given_index"])
    truth = tmp_path / "verified.csv"
    truth.write_text(f"ImageId,verdict\nILSVRC2012_val_00000003,label_error_guessed\n{agreed},label_error_other\n")
    report = json.loads(runner.invoke(app, ["eval-labels", "eval-fixture", "--truth", str(truth), "--json"]).stdout)
    assert report["n_errors"] == 2 and report["model_agrees"]["errors"] == 1
    # The disputed error first, the agreed one where its margin puts it: never below the margin's own AUROC.
    assert report["baselines"]["normalized_margin"]["auroc"] <= report["model_agrees"]["auroc_disputed_first"] <= 1


def test_eval_labels_with_a_file_that_names_no_sample_is_one_line(scanned, tmp_path):
    truth = tmp_path / "other.csv"
    truth.write_text("ImageId,verdict\nsomething_else,label_ok\n")
    result = runner.invoke(app, ["eval-labels", "eval-fixture", "--truth", str(truth)])
    assert result.exit_code == 1 and "no sample" in result.stderr


def test_eval_labels_scores_the_suggestion_against_the_humans_label(scanned, tmp_path):
    # The humans' label for the astronaut photo is, here, the model's own top-1: the baseline gets it right.
    filepaths, signals = fo.load_dataset("eval-fixture").values(["filepath", "audit_signals"])
    top1 = next(s["pred_label"] for f, s in zip(filepaths, signals) if Path(f).stem == "ILSVRC2012_val_00000003")
    truth = tmp_path / "verified.csv"
    truth.write_text(f"ImageId,guessed_wnid,verdict\nILSVRC2012_val_00000003,{top1},label_error_guessed\n")
    report = json.loads(runner.invoke(app, ["eval-labels", "eval-fixture", "--truth", str(truth), "--json"]).stdout)
    assert report["suggestions"]["n"] == 1 and report["suggestions"]["model_top1"] == 1
    assert "ambiguous" not in report  # this file names no multi-label images


def test_eval_labels_reads_a_filepath_truth_with_multi_label_images(scanned, tmp_path):
    # imagenette's layout: only the listed images are judged; the coffee photo (cup, saucer, spoon) is multi-label.
    truth = tmp_path / "truth_real.csv"
    truth.write_text("filepath,label_error,multi_label\n"
                     "val/ILSVRC2012_val_00000003.JPEG,1,0\nval/ILSVRC2012_val_00000002.JPEG,0,1\n"
                     "val/ILSVRC2012_val_00000001.JPEG,0,0\n")
    result = runner.invoke(app, ["eval-labels", "eval-fixture", "--truth", str(truth)])
    assert result.exit_code == 0, result.output
    assert "1 multi-label images" in result.stdout and "top-1 margin alone" in result.stdout
    report = json.loads(runner.invoke(app, ["eval-labels", "eval-fixture", "--truth", str(truth), "--json"]).stdout)
    assert (report["n"], report["n_errors"]) == (3, 1)
    several = report["ambiguous"]
    assert several["multi_label"] == 1 and set(several["signals"]) == {"second component's share",
                                                                       "close call (1 - top-1 margin)"}
    bad = tmp_path / "bad.csv"
    bad.write_text("filepath,label_error\nval/ILSVRC2012_val_00000003.JPEG,maybe\n")
    result = runner.invoke(app, ["eval-labels", "eval-fixture", "--truth", str(bad)])
    assert result.exit_code == 1 and "label_error must be 0 or 1" in result.stderr
