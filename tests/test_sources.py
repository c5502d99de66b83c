"""Sources become persistent FiftyOne datasets with ground_truth, and re-ingesting adds nothing."""

import csv
import shutil

import pytest
from conftest import SAMPLE_DATA

from audit.data import open_source
from audit.data.classes import imagenet_names, imagenet_wnids, resolve_imagenet_label
from audit.data.records import SourceError
from audit.store import db


def _sample_rows():
    with open(SAMPLE_DATA / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_labels_resolve_by_name_synonym_wnid_and_index():
    tabby = imagenet_names().index("tabby")
    assert resolve_imagenet_label("tabby") == tabby
    assert resolve_imagenet_label("Tabby Cat") == tabby
    assert resolve_imagenet_label(imagenet_wnids()[tabby]) == tabby
    assert resolve_imagenet_label(str(tabby)) == tabby
    assert resolve_imagenet_label("crane (bird)") != resolve_imagenet_label("crane (machine)")
    assert resolve_imagenet_label("not a class") is None and resolve_imagenet_label("1000") is None


def test_class_folders_become_a_dataset_with_ground_truth(tmp_path):
    rows = _sample_rows()[:4]
    for row in rows:
        folder = tmp_path / "photos" / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_DATA / row["filepath"], folder)
    dataset, added = open_source("folder", root=str(tmp_path / "photos"), name="folders-test")
    assert added == len(rows) == len(dataset)
    labels = sorted(dataset.values("ground_truth.label"))
    assert labels == sorted(imagenet_names()[resolve_imagenet_label(r["label"])] for r in rows)
    assert all(isinstance(i, int) for i in dataset.values("ground_truth.class_index"))
    assert all(w > 0 for w in dataset.values("metadata.width"))
    again, added_again = open_source("folder", root=str(tmp_path / "photos"), name="folders-test")
    assert added_again == 0 and len(again) == len(rows)


def test_flat_folder_with_labels_csv_and_csv_source_agree(tmp_path):
    flat, _ = open_source("folder", root=str(SAMPLE_DATA), name="flat-test", labels=str(SAMPLE_DATA / "labels.csv"))
    from_csv, _ = open_source("csv", root=str(SAMPLE_DATA / "labels.csv"), name="csv-test")
    assert sorted(flat.values("filepath")) == sorted(from_csv.values("filepath"))
    assert len(flat) == len(_sample_rows())


def test_labels_outside_imagenet_are_kept_as_given(tmp_path):
    image = SAMPLE_DATA / _sample_rows()[0]["filepath"]
    table = tmp_path / "labels.csv"
    table.write_text(f"filepath,label\n{image},my own class\n")
    dataset, _ = open_source("csv", root=str(table), name="own-labels-test")
    assert dataset.first().ground_truth.label == "my own class"
    assert not dataset.first().ground_truth.has_field("class_index")


def test_fiftyone_source_reads_an_existing_dataset_and_its_label_field():
    dataset = db.fo.Dataset("user-made", persistent=True)
    image = SAMPLE_DATA / _sample_rows()[0]["filepath"]
    dataset.add_sample(db.fo.Sample(filepath=str(image), truth=db.fo.Classification(label="tabby")))
    opened, _ = open_source("fiftyone", root="user-made", label_field="truth")
    assert opened.name == "user-made" and db.label_field(opened) == "truth"
    with pytest.raises(SourceError, match="no field 'nope'"):
        open_source("fiftyone", root="user-made", label_field="nope")
    with pytest.raises(db.DatasetError, match="no dataset named"):
        open_source("fiftyone", root="missing-dataset")


def test_csv_without_the_label_column_is_one_clear_error(tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text("path,class\na.jpg,cat\n")
    with pytest.raises(SourceError, match="missing column"):
        open_source("csv", root=str(table), name="bad-csv")
