"""Your own classifier and your own predictions (real photos, real networks, a real database): a
4-class classifier made of the embedded network with four of its ImageNet rows as the head, saved as
a user saves theirs; its predictions over the photos as the CSV, .npy or FiftyOne field a user hands
in; and every refusal of item 6, each one line, exit status 2, nothing written."""

import html
import json
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from synthetic_images import OWN_CLASSES, own_classes_folder
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.data.classes import resolve_imagenet_label
from audit.models.registry import load_model
from audit.review.report import build_report, judged_by
from audit.store import db

runner = CliRunner()
CLASSES = list(OWN_CLASSES)  # kitty, bike, launch, portrait
# The ImageNet class whose classifier row becomes each of the user's classes.
ROWS = {"kitty": "tiger cat", "bike": "moped", "launch": "missile", "portrait": "military uniform"}


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """(the folder of photos, the planted error, the weights file, the classes file, the classifier)."""
    root = tmp_path_factory.mktemp("own-model")
    folder, planted = own_classes_folder(root / "photos", per_class=5)
    for stray in (folder / "teacup").glob("*.jpg"):  # the user's classifier knows its four classes only
        stray.unlink()
    (folder / "teacup").rmdir()
    network = load_model("efficientnet_lite0", device="cpu").network
    state = {key: value.clone() for key, value in network.state_dict().items()}
    rows = [resolve_imagenet_label(ROWS[name]) for name in CLASSES]
    state["classifier.weight"], state["classifier.bias"] = state["classifier.weight"][rows], state["classifier.bias"][rows]
    weights = root / "model" / "model.pth"
    weights.parent.mkdir()
    torch.save(state, weights)
    classes = root / "model" / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    classifier = load_model("timm:tf_efficientnet_lite0", weights=weights, classes=classes, device="cpu")
    return folder, planted, weights, classes, classifier


def photos(folder: Path) -> list[tuple[str, str]]:
    """(file, label) of the folder's photos, in a fixed order."""
    return sorted((str(path), path.parent.name) for path in folder.glob("*/*.jpg"))


def probabilities(classifier, files: list[str]) -> np.ndarray:
    """The user's classifier's class probabilities of ``files`` (what a user's predictions file holds)."""
    from audit.images import open_rgb

    with torch.inference_mode():
        batch = torch.stack([classifier.preprocess(open_rgb(path)) for path in files])
        return torch.softmax(classifier.forward(batch)[0], dim=1).numpy()


def labels_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("filepath,label\n" + "".join(f"{file},{label}\n" for file, label in rows))
    return path


def predictions_csv(path: Path, files: list[str], matrix: np.ndarray, columns=CLASSES) -> Path:
    path.write_text(",".join(["filepath", *columns]) + "\n" +
                    "".join(",".join([file, *(f"{v:.6g}" for v in row)]) + "\n" for file, row in zip(files, matrix)))
    return path


def scan(*arguments: str):
    return runner.invoke(app, ["scan", *arguments, "--workers", "0", "--batch-size", "8"])


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


# --- your classifier -----------------------------------------------------------------------------


def test_your_classifier_loads_with_its_head_s_size_and_class_names(user):
    _folder, _planted, weights, _classes, classifier = user
    assert classifier.classes == tuple(CLASSES)
    assert classifier.network.get_classifier().out_features == 4  # from the state dict, not timm's 1000
    assert classifier.settings()["weights"] == str(weights)


def test_your_classifier_judges_with_its_own_head_and_explains(user):
    folder, planted, weights, classes, _ = user
    result = scan("folder", "--root", str(folder), "--name", "own-model", "--model", "timm:tf_efficientnet_lite0",
                  "--weights", str(weights), "--classes", str(classes))
    assert result.exit_code == 0, result.output
    assert "head: model (" in result.output and "4 classes" in result.output
    dataset = db.load_dataset("own-model")
    assert set(dataset.distinct(f"{names.PREDICTIONS}.label")) <= set(CLASSES)
    assert all(Path(path).is_file() for path in dataset.values(f"{names.EIGENCAM}.map_path"))
    first = db.flagged_view(dataset).first()
    assert first.filepath == str(planted)  # the cat filed under 'bike'
    assert first[names.CATEGORY] == names.SUSPECTED_MISLABEL and first[names.SUGGESTED] == "kitty"
    recorded = db.audit_info(dataset)["scan"]["models"][0]
    assert recorded["weights"] == str(weights) and recorded["classes_file"] == str(classes)
    assert "judged by the model's own head" in judged_by(dataset)
    assert "explained by timm:tf_efficientnet_lite0 (model.pth)" in judged_by(dataset)


def test_the_app_s_run_audit_form_reruns_your_classifier_as_the_scan_ran_it(user, execute):
    dataset = db.load_dataset("own-model")  # scanned by the test above
    one = dataset.match(db.F("filepath").ends_with("planted_cat.jpg"))
    _, notes = execute("run_audit", view=one, params={"redo": True})
    assert not [n for n in notes if n["variant"] == "error"], notes
    assert one.first()[names.PREDICTIONS].label in CLASSES


def test_a_classes_file_that_is_not_the_head_s_size_is_refused(user, tmp_path):
    folder, _planted, weights, _classes, _ = user
    three = tmp_path / "three.txt"
    three.write_text("kitty\nbike\nlaunch\n")
    result = scan("folder", "--root", str(folder), "--name", "own-model-three", "--model", "timm:tf_efficientnet_lite0",
                  "--weights", str(weights), "--classes", str(three))
    assert result.exit_code == 2
    assert f"{three} names 3 classes, but the head of {weights} has 4 outputs" in one_line(result.output)
    assert "own-model-three" not in db.list_datasets()


def test_a_head_of_another_size_without_class_names_is_refused(user):
    folder, _planted, weights, _classes, _ = user
    result = scan("folder", "--root", str(folder), "--name", "own-model-nameless", "--model", "timm:tf_efficientnet_lite0",
                  "--weights", str(weights))
    assert result.exit_code == 2
    assert "has a 4-class head: name its classes with --classes FILE" in one_line(result.output)


def test_a_model_trained_at_another_input_size_says_so_in_a_config_beside_its_weights(user, tmp_path):
    folder, _planted, weights, classes, _ = user
    small = tmp_path / "small"
    small.mkdir()
    (small / "model.pth").write_bytes(Path(weights).read_bytes())
    (small / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_lite0", "num_classes": 4,
                                                   "label_names": CLASSES,
                                                   "pretrained_cfg": {"input_size": [3, 96, 96], "crop_pct": 1.0}}))
    result = scan("folder", "--root", str(folder), "--name", "own-model-96", "--model", "timm:tf_efficientnet_lite0",
                  "--weights", str(small / "model.pth"), "--limit", "6")
    assert result.exit_code == 0, result.output
    assert "resize 96 bicubic, crop 96" in result.output and str(small / "config.json") in result.output
    recorded = db.audit_info(db.load_dataset("own-model-96"))["scan"]["models"][0]
    assert "crop 96" in recorded["preprocess"] and recorded["config"] == str(small / "config.json")


# --- your predictions ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def given(user, tmp_path_factory):
    """(labels.csv of the photos, their rows, the user's classifier's probabilities over them, a folder)."""
    folder, planted, _weights, _classes, classifier = user
    root = tmp_path_factory.mktemp("given")
    rows = photos(folder)
    return labels_csv(root / "labels.csv", rows), rows, probabilities(classifier, [f for f, _ in rows]), root, planted


def test_your_predictions_judge_the_labels(given):
    table, rows, matrix, root, planted = given
    result = scan("csv", "--root", str(table), "--name", "given-csv", "--predictions",
                  str(predictions_csv(root / "preds.csv", [f for f, _ in rows], matrix)))
    assert result.exit_code == 0, result.output
    assert "head: given (your predictions" in result.output
    assert f"({len(rows)} rows, 4 classes, probabilities)" in result.output
    dataset = db.load_dataset("given-csv")
    assert db.audit_info(dataset)["head"]["kind"] == "given"
    first = db.flagged_view(dataset).first()
    assert first.filepath == str(planted) and first[names.CATEGORY] == names.SUSPECTED_MISLABEL
    assert first[names.SUGGESTED] == "kitty"
    assert set(dataset.distinct(f"{names.PREDICTIONS}.label")) <= set(CLASSES)
    assert all(Path(path).is_file() for path in dataset.values(f"{names.EIGENCAM}.map_path"))  # the model still explains
    page = build_report(dataset)  # the report says which head judged, and which model explained
    assert f"judged by your predictions, {root / 'preds.csv'}" in page and "explained by efficientnet_lite0" in page


def test_your_classifier_explains_while_your_predictions_judge(given, user):
    table, rows, matrix, root, planted = given
    _folder, _planted, weights, classes, _ = user
    result = scan("csv", "--root", str(table), "--name", "given-and-model", "--model", "timm:tf_efficientnet_lite0",
                  "--weights", str(weights), "--classes", str(classes), "--predictions",
                  str(predictions_csv(root / "both.csv", [f for f, _ in rows], matrix)))
    assert result.exit_code == 0, result.output
    assert "head: given (" in result.output
    dataset = db.load_dataset("given-and-model")
    assert db.audit_info(dataset)["scan"]["models"][0]["weights"] == str(weights)
    first = db.flagged_view(dataset).first()
    assert first.filepath == str(planted) and first[names.SUGGESTED] == "kitty"
    assert first[names.GRADCAM_GIVEN] is not None  # the class maps of your model, which knows the labels
    assert 0.0 <= db.audit_info(dataset)["head"]["given_share_against_model"] <= 1.0


def test_where_your_predictions_say_nothing_your_classifier_s_own_probabilities_judge(given, user):
    """Predictions that give every class the same chance cannot tell a wrong label: your classifier,
    which explains, has its own probabilities weighed in at the share that makes the labels most likely."""
    table, rows, _matrix, root, planted = given
    _folder, _planted, weights, classes, _ = user
    flat = np.full((len(rows), len(CLASSES)), 1.0 / len(CLASSES))
    arguments = ("csv", "--root", str(table), "--name", "flat-and-model", "--model", "timm:tf_efficientnet_lite0",
                 "--weights", str(weights), "--classes", str(classes), "--predictions",
                 str(predictions_csv(root / "flat.csv", [f for f, _ in rows], flat)))
    result = scan(*arguments)
    assert result.exit_code == 0, result.output
    dataset = db.load_dataset("flat-and-model")
    share = db.audit_info(dataset)["head"]["given_share_against_model"]
    assert share < 0.5  # the labels fit your classifier better
    said = f"weighed with the model's own at {1 - share:.0%}"
    assert said in result.output.replace("\n", " ") and said in html.unescape(build_report(dataset))
    again = scan(*arguments)  # nothing left to judge: what was weighed in is still said
    assert again.exit_code == 0 and "scanned 0," in again.output, again.output
    assert said in again.output.replace("\n", " ") and said in html.unescape(build_report(dataset))
    first = db.flagged_view(dataset).first()
    assert first.filepath == str(planted) and first[names.SUGGESTED] == "kitty"


def test_samples_added_without_predictions_are_said_in_one_line(given, tmp_path):
    table, rows, matrix, root, _planted = given
    result = scan("csv", "--root", str(table), "--name", "given-grown", "--predictions",
                  str(predictions_csv(root / "grown.csv", [f for f, _ in rows], matrix)))
    assert result.exit_code == 0, result.output
    grown = labels_csv(tmp_path / "grown.csv", rows + [(str(SAMPLE_DATA / "chelsea.jpg"), "kitty")])
    result = scan("csv", "--root", str(grown), "--name", "given-grown")  # the new photo has no prediction
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: 1 samples have no predictions (added since")


def test_logits_are_recognised_and_said(given):
    table, rows, matrix, root, planted = given
    logits = np.log(np.clip(matrix, 1e-6, 1)) + 3.0  # what a classifier's last layer gives, up to a constant
    result = scan("csv", "--root", str(table), "--name", "given-logits", "--predictions",
                  str(predictions_csv(root / "logits.csv", [f for f, _ in rows], logits)))
    assert result.exit_code == 0, result.output
    assert "logits, turned into probabilities" in result.output
    assert db.flagged_view(db.load_dataset("given-logits")).first().filepath == str(planted)


def test_an_npy_follows_the_csv_source_s_rows_and_the_classes_file(given, user):
    table, _rows, matrix, root, planted = given
    np.save(root / "preds.npy", matrix)
    result = scan("csv", "--root", str(table), "--name", "given-npy", "--predictions", str(root / "preds.npy"),
                  "--classes", str(user[3]))
    assert result.exit_code == 0, result.output
    assert db.flagged_view(db.load_dataset("given-npy")).first().filepath == str(planted)


def test_a_fiftyone_field_with_logits_judges(given):
    _table, rows, matrix, _root, planted = given
    dataset = fo.Dataset("given-field-source")
    dataset.add_samples([fo.Sample(filepath=file, ground_truth=fo.Classification(label=label),
                                   theirs=fo.Classification(label=CLASSES[int(p.argmax())], logits=np.log(p + 1e-6)))
                         for (file, label), p in zip(rows, matrix)])
    dataset.classes = {"theirs": CLASSES}
    dataset.persistent = True
    result = scan("fiftyone", "--root", "given-field-source", "--name", "given-field", "--predictions", "theirs")
    assert result.exit_code == 0, result.output
    assert "head: given (" in result.output and "field 'theirs'" in result.output
    assert db.flagged_view(db.load_dataset("given-field")).first().filepath == str(planted)


def test_predictions_made_in_sample_are_said_and_the_scan_finishes(given):
    table, rows, _matrix, root, _planted = given
    memorised = np.full((len(rows), 4), 0.01)
    for row, (_file, label) in enumerate(rows):
        memorised[row, CLASSES.index(label)] = 0.97  # every label the top class, nearly sure: the telltale
    result = scan("csv", "--root", str(table), "--name", "given-in-sample", "--predictions",
                  str(predictions_csv(root / "memorised.csv", [f for f, _ in rows], memorised)))
    assert result.exit_code == 0, result.output
    assert "looks made in sample" in result.output and "out-of-fold" in result.output
    assert db.audit_info(db.load_dataset("given-in-sample"))["predictions"]["in_sample"] is True


@pytest.mark.parametrize("case, expected", [
    ("missing row", "has no row for 1 of the dataset's images (the first: "),
    ("extra row", "has rows for 1 files the dataset lacks (the first: "),
    ("nan", "row 2 holds NaN or an infinite value"),
    ("negative", "row 1 holds a negative probability"),
    ("columns", "1 of the dataset's labels are not among its classes ('portrait')"),
    ("npy rows", "has 3 rows, but the source has"),
])
def test_predictions_that_do_not_fit_are_refused_in_one_line_before_anything_is_written(given, user, tmp_path,
                                                                                       case, expected):
    table, rows, matrix, _root, _planted = given
    files = [f for f, _ in rows]
    if case == "missing row":
        predictions = predictions_csv(tmp_path / "p.csv", files[:-1], matrix[:-1])
    elif case == "extra row":
        predictions = predictions_csv(tmp_path / "p.csv", files + [str(tmp_path / "elsewhere.jpg")],
                                      np.vstack([matrix, matrix[:1]]))
    elif case == "nan":
        bad = matrix.copy()
        bad[1, 0] = np.nan
        predictions = predictions_csv(tmp_path / "p.csv", files, bad)
    elif case == "negative":
        bad = matrix.copy()
        bad[0, 0], bad[0, 1] = -0.1, bad[0, 1] + bad[0, 0] + 0.1  # still sums to 1
        predictions = predictions_csv(tmp_path / "p.csv", files, bad)
    elif case == "columns":
        predictions = predictions_csv(tmp_path / "p.csv", files, matrix[:, :3], columns=CLASSES[:3])
    else:
        predictions = tmp_path / "p.npy"
        np.save(predictions, matrix[:3])
    extra = ["--classes", str(user[3])] if case == "npy rows" else []
    name = f"refused-{case.replace(' ', '-')}"
    result = scan("csv", "--root", str(table), "--name", name, "--predictions", str(predictions), *extra)
    assert result.exit_code == 2, result.output
    assert expected in one_line(result.output)
    assert name not in db.list_datasets()
