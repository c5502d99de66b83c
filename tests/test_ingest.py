"""audit.data.ingest: records become the samples add_samples would make, in bulk, once; every ImageNet
layout gives the same FiftyOne labels, boxes and sizes; the CLI reports malformed inputs and goes on."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

import pytest
from bson import ObjectId
from imagenet_fixtures import SAMPLES, build_archives, build_extracted, build_folders, build_kaggle, write_photos
from PIL import Image
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.data import open_source
from audit.data.classes import imagenet_names, imagenet_wnids
from audit.data.ingest import ground_truth_label, image_size, ingest
from audit.data.records import GroundTruthBox, Record, SourceError
from audit.store import db

fo = db.fo
runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ingest-photos")
    return folder, write_photos(folder)


def build(layout: str, root: Path, photos) -> Path:
    folder, sizes = photos
    if layout == "kaggle":
        return build_kaggle(root, folder)
    return {"archives": build_archives, "extracted": build_extracted, "folders": build_folders}[layout](
        root, folder, sizes)


# --- the bulk path writes what add_samples writes -----------------------------------------------


def reference_sample(record: Record):
    """The sample the public API makes of a record (the former per-sample ingest)."""
    size = image_size(record)
    sample = fo.Sample(filepath=record.filepath)
    sample[names.GROUND_TRUTH] = ground_truth_label(record.label)
    sample.metadata = fo.ImageMetadata(size_bytes=Path(record.filepath).stat().st_size,
                                       mime_type=mimetypes.guess_type(record.filepath)[0])
    if size:
        sample.metadata.width, sample.metadata.height = size
    if record.boxes and size:
        labels = {box.label: ground_truth_label(box.label) for box in record.boxes}
        sample[names.GT_BOXES] = fo.Detections(detections=[
            fo.Detection(label=labels[box.label].label, bounding_box=[
                box.x1 / size[0], box.y1 / size[1], (box.x2 - box.x1) / size[0], (box.y2 - box.y1) / size[1]])
            for box in record.boxes])
    return sample


def stored(dataset) -> dict[str, dict]:
    """filepath -> the stored sample document without ids, timestamps and random keys."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in ("_id", "_rand", "_dataset_id", "created_at", "last_modified_at")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        assert not isinstance(value, ObjectId)
        return value

    return {doc["filepath"]: strip(doc) for doc in dataset._sample_collection.find()}


def schema(dataset) -> dict[str, tuple]:
    return {name: (type(field).__name__, getattr(field, "document_type", None))
            for name, field in dataset.get_field_schema(flat=True).items()}


def test_bulk_documents_are_those_of_add_samples(tmp_path, photos):
    folder, sizes = photos
    image = [str(folder / f"{s.stem}.JPEG") for s in SAMPLES]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    tabby = imagenet_wnids()[imagenet_names().index("tabby")]
    records = [
        Record(image[0], tabby, [GroundTruthBox(tabby, 143, 19, 322, 299)], *sizes[SAMPLES[0].stem]),
        Record(image[1], "espresso", [GroundTruthBox("n07920052", 1, 2, 30, 40),
                                      GroundTruthBox("my box", 5, 5, 50, 50)]),  # size from the header
        Record(image[2], "my own class"),
        Record(image[3], None),
        Record(image[4], "281"),  # a class index
        Record(str(tmp_path / "broken.jpg"), "tabby", [GroundTruthBox(tabby, 1, 1, 5, 5)]),  # unreadable
    ]
    fast, added = ingest("bulk-path", records, warn=pytest.fail)
    reference = fo.Dataset("public-path")
    reference.add_samples([reference_sample(r) for r in records])
    assert added == len(records) == len(fast)
    assert stored(fast) == stored(reference)
    assert schema(fast) == schema(reference) and fast.media_type == reference.media_type == "image"
    first = fast.first()  # FiftyOne reads them back as its own
    assert isinstance(first.ground_truth, fo.Classification) and first.ground_truth.wnid == tabby
    assert first.gt_boxes.detections[0].label == "tabby" and first.metadata.width == sizes[SAMPLES[0].stem][0]
    truth_ids = [i for i in fast.values("ground_truth.id") if i]
    assert len(set(truth_ids)) == len(records) - 1  # one has no label
    assert len(set(fast.values("gt_boxes.detections.id", unwind=True))) == 3


def test_ingest_skips_what_it_holds_and_what_is_no_image(tmp_path, photos):
    folder, _ = photos
    image = str(folder / f"{SAMPLES[0].stem}.JPEG")
    (tmp_path / "clip.mp4").write_bytes(b"")
    warnings: list[str] = []
    dataset, added = ingest("skips", [Record(image, "tabby"), Record(str(tmp_path / "clip.mp4"), "tabby"),
                                      Record(image, "tabby")], warn=warnings.append)
    assert added == 1 and len(warnings) == 1 and "clip.mp4" in warnings[0] and "not an image" in warnings[0]
    roundabout = os.path.join(str(folder), "..", folder.name, f"{SAMPLES[0].stem}.JPEG")
    assert ingest("skips", [Record(roundabout, "tabby")])[1] == 0
    assert dataset.values("filepath") == [image]


def test_a_dataset_of_other_fields_is_refused(photos):
    folder, _ = photos
    dataset = fo.Dataset("taken", persistent=True)
    dataset.add_sample_field(names.GROUND_TRUTH, fo.StringField)
    with pytest.raises(SourceError, match="'ground_truth' that is no Classification"):
        ingest("taken", [Record(str(folder / f"{SAMPLES[0].stem}.JPEG"), "tabby")])


# --- every layout, the same FiftyOne samples ----------------------------------------------------


def expected_samples(sizes: dict) -> dict[str, tuple]:
    """File name -> (label, class index, wnid, (width, height), relative boxes)."""
    expected = {}
    for s in SAMPLES:
        width, height = sizes[s.stem]
        index = imagenet_wnids().index(s.wnid)
        boxes = [(imagenet_names()[index], [x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height])
                 for x1, y1, x2, y2 in s.boxes]
        expected[f"{s.stem}.JPEG"] = (imagenet_names()[index], index, s.wnid, (width, height), boxes)
    return expected


def fiftyone_samples(dataset) -> dict[str, tuple]:
    columns = dataset.values(["filepath", "ground_truth.label", "ground_truth.class_index", "ground_truth.wnid",
                              "metadata.width", "metadata.height", "gt_boxes.detections"])
    return {Path(path).name: (label, index, wnid, (width, height),
                              [(d.label, d.bounding_box) for d in detections])
            for path, label, index, wnid, width, height, detections in zip(*columns)}


@pytest.mark.parametrize("layout", ["archives", "extracted", "kaggle", "folders"])
def test_every_layout_gives_the_same_samples(tmp_path, photos, layout):
    root = build(layout, tmp_path / "root", photos)
    warnings: list[str] = []
    dataset, added = open_source("imagenet-val", root=str(root), name=f"layout-{layout}", warn=warnings.append)
    assert warnings == [] and added == len(SAMPLES) == len(dataset)
    got, expected = fiftyone_samples(dataset), expected_samples(photos[1])
    assert got.keys() == expected.keys()
    for name, (label, index, wnid, size, boxes) in expected.items():
        assert got[name][:4] == (label, index, wnid, size), name
        assert [b[0] for b in got[name][4]] == [b[0] for b in boxes]
        assert got[name][4] == [(b[0], pytest.approx(b[1], abs=1e-12)) for b in boxes]
    for path, width, height, size_bytes, mime in zip(*dataset.values(["filepath", "metadata.width", "metadata.height",
                                                                      "metadata.size_bytes", "metadata.mime_type"])):
        assert Image.open(path).size == (width, height)
        assert size_bytes == Path(path).stat().st_size and mime == "image/jpeg"


def test_reingest_adds_nothing_whatever_the_spelling_of_root(tmp_path, photos, monkeypatch):
    root = build("extracted", tmp_path / "root", photos)
    first, added = open_source("imagenet-val", root=str(root), name="twice", limit=4)
    assert added == 4
    parsed = []
    import audit.data.imagenet as imagenet

    parse = imagenet.ET.parse
    monkeypatch.setattr(imagenet.ET, "parse", lambda path: parsed.append(path) or parse(path))
    monkeypatch.chdir(tmp_path)
    again, added_again = open_source("imagenet-val", root="./root/../root", name="twice")
    assert added_again == len(SAMPLES) - 4 == len(parsed)  # box files of held images are not read again
    assert len(again) == len(SAMPLES) == len(set(again.values("filepath")))
    monkeypatch.setenv("IMAGENET_ROOT", str(root))
    assert open_source("imagenet-val", root=None, name="twice")[1] == 0


# --- the command line ---------------------------------------------------------------------------


def test_cli_scan_warns_with_file_and_line_and_the_rest_loads(tmp_path, photos):
    root = build("kaggle", tmp_path / "root", photos)
    csv_file = root / "LOC_val_solution.csv"
    lines = csv_file.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith(SAMPLES[2].stem))
    lines[number] = lines[number][:-8]  # the third box of the astronaut cut off mid-way
    csv_file.write_text("\n".join(lines) + "\n")
    args = ["scan", "imagenet-val", "--root", str(root), "--name", "cli-kaggle", "--workers", "0", "--limit", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    assert f"{csv_file}:{number + 1}: truncated PredictionString" in warning
    assert "dataset 'cli-kaggle': 3 samples (3 new)" in result.stderr
    dataset = db.load_dataset("cli-kaggle")
    astronaut = dataset[str(root / "ILSVRC/Data/CLS-LOC/val" / f"{SAMPLES[2].stem}.JPEG")]
    assert astronaut.ground_truth.wnid == SAMPLES[2].wnid and len(astronaut.gt_boxes.detections) == 2
    assert len(dataset.exists("predictions")) == 3
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "3 samples (0 new)" in again.stderr and "scanned 0" in again.stderr


def test_cli_layout_forcing(tmp_path, photos):
    root = build("archives", tmp_path / "root", photos)
    build("extracted", root, photos)
    ambiguous = runner.invoke(app, ["scan", "imagenet-val", "--root", str(root), "--name", "forced"])
    assert ambiguous.exit_code == 1 and "several ImageNet layouts" in ambiguous.stderr
    assert "forced" not in fo.list_datasets()
    wrong = runner.invoke(app, ["scan", "imagenet-val", "--root", str(root), "--layout", "kaggle"])
    assert wrong.exit_code == 1 and str(root / "ILSVRC/Data/CLS-LOC/val") in wrong.stderr
    usage = runner.invoke(app, ["scan", "imagenet-val", "--root", str(root), "--layout", "zip"])
    assert usage.exit_code == 2 and "'zip' is not one of" in usage.output
    dataset, added = open_source("imagenet-val", root=str(root), name="forced", layout="extracted")
    assert added == len(SAMPLES) and Path(dataset.first().filepath).parent == root / "val"
