"""audit.data.imagenet: the four ILSVRC2012 validation layouts read back the same records."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from imagenet_fixtures import (
    SAMPLES,
    build_archives,
    build_extracted,
    build_folders,
    build_kaggle,
    class_ids,
    write_photos,
)
from PIL import Image

from audit.data import imagenet
from audit.data.classes import imagenet_wnids
from audit.data.imagenet import LAYOUTS, detect_layout, read_imagenet
from audit.data.records import GroundTruthBox, SourceError

SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-val-dev"


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> tuple[Path, dict]:
    """The sample JPEGs (written once) and their native sizes."""
    folder = tmp_path_factory.mktemp("photos")
    return folder, write_photos(folder)


def build(layout: str, root: Path, photos: tuple[Path, dict], **options) -> Path:
    folder, sizes = photos
    if layout == "kaggle":
        return build_kaggle(root, folder)
    builders = {"archives": build_archives, "extracted": build_extracted, "folders": build_folders}
    return builders[layout](root, folder, sizes, **options)


def read(root: Path, **options) -> tuple[list, list[str]]:
    """The records under root and the warnings raised while reading them."""
    warnings: list[str] = []
    return list(read_imagenet(root, warn=warnings.append, **options)), warnings


def summary(records) -> list[tuple[str, str | None, list[GroundTruthBox]]]:
    return [(Path(r.filepath).name, r.label, r.boxes) for r in records]


EXPECTED = [(f"{s.stem}.JPEG", s.wnid, [GroundTruthBox(s.wnid, *map(float, b)) for b in s.boxes])
            for s in SAMPLES]

VARIANTS = [
    ("archives", {}),
    ("extracted", {"images_in_val": True}),
    ("extracted", {"images_in_val": False}),
    ("kaggle", {}),
    ("folders", {"xml_beside": True}),
    ("folders", {"xml_beside": False}),
]


@pytest.mark.parametrize(("layout", "options"), VARIANTS)
def test_every_layout_yields_the_same_labels_and_boxes(tmp_path, photos, layout, options):
    root = build(layout, tmp_path / "root", photos, **options)
    assert detect_layout(root) == layout
    records, warnings = read(root)
    assert warnings == []
    assert summary(records) == EXPECTED
    assert all(os.path.isabs(r.filepath) and os.path.isfile(r.filepath) for r in records)
    sizes = [(r.width, r.height) for r in records]
    if layout == "kaggle":
        assert sizes == [(None, None)] * len(SAMPLES)
    else:  # from the VOC <size>, which matches the stored file
        assert sizes == [Image.open(r.filepath).size for r in records]
    assert summary(read_imagenet(root, layout=layout)) == summary(records)  # deterministic


def test_meta_mat_order_is_read_not_assumed(tmp_path, photos):
    ids = class_ids()
    assert [ids[w] for w in imagenet_wnids()] != list(range(1, 1001))  # the fixture is shuffled
    records, _ = read(build("extracted", tmp_path, photos))
    assert [r.label for r in records] == [s.wnid for s in SAMPLES]


def test_limit_stops_early_and_parses_only_the_box_files_it_yields(tmp_path, photos, monkeypatch):
    root = build("extracted", tmp_path, photos)
    parsed = []
    parse = imagenet.ET.parse
    monkeypatch.setattr(imagenet.ET, "parse", lambda path: parsed.append(path) or parse(path))
    records, _ = read(root, limit=2)
    assert summary(records) == EXPECTED[:2]
    assert len(parsed) == 2
    assert read(root, limit=0)[0] == []


# --- archives ---------------------------------------------------------------------------------


def test_archives_are_extracted_once(tmp_path, photos, monkeypatch):
    root = build("archives", tmp_path / "root", photos)
    first, _ = read(root)
    cache = root / ".audit-extracted"
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert {"ILSVRC2012_img_val", "ILSVRC2012_devkit_t12", "ILSVRC2012_bbox_val_v3"} <= set(stamps)

    def refuse(*args, **kwargs):
        raise AssertionError("extracted a second time")

    monkeypatch.setattr(imagenet.tarfile, "open", refuse)
    second, _ = read(root)
    assert summary(second) == summary(first) == EXPECTED
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps


def test_interrupted_extraction_is_redone(tmp_path, photos, monkeypatch):
    root = build("archives", tmp_path / "root", photos)
    extract = tarfile.TarFile.extract
    calls = []

    def interrupted(self, member, *args, **kwargs):
        calls.append(member.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return extract(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        read_imagenet(root)
    cache = root / ".audit-extracted"
    assert not (cache / "ILSVRC2012_img_val").exists()
    assert len(list((cache / "ILSVRC2012_img_val.partial").iterdir())) == 2
    monkeypatch.setattr(tarfile.TarFile, "extract", extract)
    records, warnings = read(root)
    assert summary(records) == EXPECTED and warnings == []
    assert not (cache / "ILSVRC2012_img_val.partial").exists()


def test_archives_extract_into_cache_dir_and_boxes_are_optional(tmp_path, photos):
    root = build("archives", tmp_path / "root", photos, boxes=False)
    records, warnings = read(root, cache_dir=tmp_path / "cache")
    assert warnings == []
    assert [(name, label) for name, label, _ in summary(records)] == [e[:2] for e in EXPECTED]
    assert all(r.boxes == [] and r.width is None for r in records)
    assert (tmp_path / "cache" / "ILSVRC2012_img_val").is_dir()
    assert not (root / ".audit-extracted").exists()


def test_archive_member_outside_the_folder_is_refused(tmp_path, photos):
    root = build("archives", tmp_path / "root", photos)
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(SourceError, match="ILSVRC2012_devkit_t12.tar.gz"):
        read_imagenet(root)
    assert not list(tmp_path.rglob("escaped.txt"))


# --- malformed inputs -------------------------------------------------------------------------


def test_truncated_kaggle_line_warns_and_the_rest_loads(tmp_path, photos):
    root = build("kaggle", tmp_path, photos)
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith(SAMPLES[2].stem))
    lines[number] = lines[number][:-8]  # the third box of the astronaut cut off mid-way
    csv.write_text("\n".join(lines) + "\n")
    records, warnings = read(root)
    assert len(warnings) == 1 and f"LOC_val_solution.csv:{number + 1}:" in warnings[0]
    got = summary(records)
    assert got[2][1] == SAMPLES[2].wnid and got[2][2] == EXPECTED[2][2][:2]
    assert got[:2] + got[3:] == EXPECTED[:2] + EXPECTED[3:]


def test_kaggle_line_without_prediction_and_missing_image(tmp_path, photos):
    root = build("kaggle", tmp_path, photos)
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith(SAMPLES[0].stem))
    lines[number] = SAMPLES[0].stem
    csv.write_text("\n".join(lines) + "\n")
    (root / "ILSVRC/Data/CLS-LOC/val" / f"{SAMPLES[3].stem}.JPEG").unlink()
    records, warnings = read(root)
    assert len(warnings) == 2
    assert f"LOC_val_solution.csv:{number + 1}:" in warnings[0]
    assert "missing" in warnings[1] and SAMPLES[3].stem in warnings[1]
    assert summary(records) == [(EXPECTED[0][0], None, [])] + EXPECTED[1:3] + EXPECTED[4:]


def test_box_file_without_objects_warns_and_the_rest_loads(tmp_path, photos):
    root = build("extracted", tmp_path, photos)
    xml = root / "val" / f"{SAMPLES[1].stem}.xml"
    xml.write_text("<annotation><size><width>600</width><height>400</height></size></annotation>")
    broken = root / "val" / f"{SAMPLES[4].stem}.xml"
    broken.write_text("<annotation><size>\n<width>")
    records, warnings = read(root)
    assert len(warnings) == 2
    assert str(xml) in warnings[0] and "no <object>" in warnings[0]
    assert str(broken) in warnings[1] and "line 2" in warnings[1]
    assert (records[1].boxes, records[1].width, records[1].height) == ([], 600, 400)
    assert records[4].boxes == [] and records[4].label == SAMPLES[4].wnid
    assert summary(records[:1] + records[2:4] + records[5:]) == EXPECTED[:1] + EXPECTED[2:4] + EXPECTED[5:]


@pytest.mark.parametrize("bad", ["1001", "0", "abc", ""])
def test_ground_truth_id_out_of_range_warns_with_file_and_line(tmp_path, photos, bad):
    root = build("extracted", tmp_path, photos)
    truth = root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    lines = truth.read_text().splitlines()
    lines[2] = bad
    truth.write_text("\n".join(lines) + "\n")
    records, warnings = read(root)
    assert len(warnings) == 1 and f"{truth}:3:" in warnings[0]
    assert records[2].label is None and records[2].boxes == EXPECTED[2][2]
    assert summary(records[:2] + records[3:]) == EXPECTED[:2] + EXPECTED[3:]


def test_missing_image_listed_in_the_ground_truth_warns(tmp_path, photos):
    root = build("extracted", tmp_path, photos)
    (root / "val" / f"{SAMPLES[3].stem}.JPEG").unlink()
    records, warnings = read(root)
    assert len(warnings) == 1 and f"{SAMPLES[3].stem} (line 4)" in warnings[0]
    assert summary(records) == EXPECTED[:3] + EXPECTED[4:]


def test_image_without_box_file_and_unknown_class_folder_warn(tmp_path, photos):
    root = build("folders", tmp_path, photos)
    (root / "val" / SAMPLES[4].wnid / f"{SAMPLES[4].stem}.xml").unlink()
    odd = root / "val" / "n99999999"
    odd.mkdir()
    (root / "val" / SAMPLES[5].wnid / f"{SAMPLES[5].stem}.JPEG").rename(odd / f"{SAMPLES[5].stem}.JPEG")
    records, warnings = read(root)
    assert len(warnings) == 2
    assert "n99999999" in warnings[0] and SAMPLES[4].stem in warnings[1]
    assert records[4].boxes == [] and records[5].label == "n99999999"


# --- unusable sources -------------------------------------------------------------------------


def test_empty_root_names_what_was_expected(tmp_path):
    with pytest.raises(SourceError) as error:
        read_imagenet(tmp_path)
    for clue in ("ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12/", "LOC_val_solution.csv", "val/<wnid>/"):
        assert clue in str(error.value)


def test_ambiguous_root_names_every_match(tmp_path, photos):
    root = build("archives", tmp_path / "root", photos)
    build("extracted", root, photos)
    with pytest.raises(SourceError, match="several ImageNet layouts") as error:
        detect_layout(root)
    assert "(archives)" in str(error.value) and "(extracted)" in str(error.value)
    assert summary(read_imagenet(root, layout="extracted")) == EXPECTED


@pytest.mark.parametrize(
    ("layout", "remove", "expected"),
    [
        ("extracted", "ILSVRC2012_devkit_t12/data/meta.mat", "ILSVRC2012_devkit_t12/data/meta.mat"),
        ("extracted", "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
         "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"),
        ("kaggle", "LOC_val_solution.csv", "LOC_val_solution.csv"),
        ("archives", "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12.tar.gz"),
        ("archives", "ILSVRC2012_img_val.tar", "ILSVRC2012_img_val.tar"),
    ],
)
def test_missing_file_names_the_expected_path(tmp_path, photos, layout, remove, expected):
    root = build(layout, tmp_path / "root", photos)
    (root / remove).unlink()
    with pytest.raises(SourceError, match=f"expected .* at {root / expected}$"):
        read_imagenet(root)


@pytest.mark.parametrize("layout", ["extracted", "kaggle", "folders"])
def test_no_images_is_an_error(tmp_path, photos, layout):
    root = build(layout, tmp_path / "root", photos)
    for image in root.rglob("*.JPEG"):
        image.unlink()
    with pytest.raises(SourceError, match="images"):
        read_imagenet(root, layout=layout)


def test_forced_layout_that_is_absent_names_the_expected_path(tmp_path, photos):
    root = build("extracted", tmp_path / "root", photos)
    with pytest.raises(SourceError, match=str(root / "ILSVRC/Data/CLS-LOC/val")):
        read_imagenet(root, layout="kaggle")
    with pytest.raises(ValueError, match="unknown ImageNet layout"):
        read_imagenet(root, layout="zip")
    assert LAYOUTS == ("archives", "extracted", "kaggle", "folders")


def test_meta_mat_that_is_not_one_is_an_error(tmp_path, photos):
    root = build("extracted", tmp_path / "root", photos)
    meta = root / "ILSVRC2012_devkit_t12/data/meta.mat"
    meta.write_bytes(b"not a mat file")
    with pytest.raises(SourceError, match=str(meta)):
        read_imagenet(root)


# --- the real Kaggle dev set ------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_DEV.is_dir(), reason="../shared/data/imagenet-val-dev is absent")
def test_real_kaggle_dev_set():
    assert detect_layout(SHARED_DEV) == "kaggle"
    records, warnings = read(SHARED_DEV)
    assert warnings == []
    assert len(records) == 361
    assert all(r.boxes and r.label in set(imagenet_wnids()) for r in records)
    assert all(0 <= b.x1 < b.x2 <= 227 and 0 <= b.y1 < b.y2 <= 227 for r in records for b in r.boxes)
    names = [Path(r.filepath).name for r in records]
    assert names == sorted(names) and names[0] == "ILSVRC2012_val_00000355.JPEG"


def move_boxes(root: Path, to: Path) -> None:
    """The box files of root/val/ moved into ``to``, as when the bbox archive is extracted on its own."""
    to.mkdir(parents=True)
    for xml in (root / "val").glob("*.xml"):
        xml.rename(to / xml.name)


@pytest.mark.parametrize("layout", ["extracted", "folders"])
def test_box_files_in_a_folder_of_their_own_under_the_root_are_found(tmp_path, photos, layout):
    root = build(layout, tmp_path / "root", photos, **({"xml_beside": False} if layout == "folders" else {}))
    (root / "train" / "n01440764").mkdir(parents=True)  # other folders on the way are passed by
    (root / "train" / "n01440764" / "n01440764_1.xml").write_text("<annotation/>")
    move_boxes(root, root / "bbox" / "val")
    records, warnings = read(root)
    assert sorted(summary(records)) == sorted(EXPECTED) and not warnings


def test_boxes_names_a_box_folder_anywhere(tmp_path, photos):
    root = build("extracted", tmp_path / "root", photos)
    move_boxes(root, tmp_path / "elsewhere")
    assert all(not r.boxes for r in read(root)[0])  # outside the root: not searched for
    records, _ = read(root, boxes=tmp_path / "elsewhere")
    assert summary(records) == EXPECTED
    with pytest.raises(SourceError, match="box folder \\(--boxes\\) not found"):
        read(root, boxes=tmp_path / "nowhere")
    with pytest.raises(SourceError, match="no box files"):
        read(root, boxes=root / "ILSVRC2012_devkit_t12")


def test_the_scan_says_how_many_images_got_boxes(tmp_path, photos):
    """As a user meets it: the installed program, on the official extracted layout with bbox/val/."""
    from test_bad_inputs import run_audit

    root = build("extracted", tmp_path / "root", photos)
    move_boxes(root, root / "bbox" / "val")
    (root / "val" / f"{SAMPLES[0].stem}.JPEG").rename(tmp_path / "aside.JPEG")  # one image missing
    ran = run_audit("scan", "imagenet-val", "--root", str(root), "--name", "boxes-elsewhere", "--workers", "0",
                    "--no-second-opinion", "--no-class-maps")
    assert ran.returncode == 0, ran.stderr
    assert f"dataset 'boxes-elsewhere': {len(SAMPLES) - 1} samples ({len(SAMPLES) - 1} new), " \
           f"{len(SAMPLES) - 1} with boxes" in ran.stderr
    bad = run_audit("scan", "imagenet-val", "--root", str(root), "--name", "boxes-nowhere",
                    "--boxes", str(tmp_path / "nowhere"))
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: box folder (--boxes) not found: {tmp_path / 'nowhere'}"
