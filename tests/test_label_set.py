"""A dataset with a label set of its own (real photos, the real model, a real database): suggestions
name only the dataset's classes, a label true for one of two objects is `ambiguous`, the review view
puts the likely label errors first, and each flagged sample says why in a few words."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit import db, names
from audit.cli import app
from audit.triage import label_set

from synthetic_images import OWN_LABELS as LABELS, own_labels_csv

runner = CliRunner()
NAME = "own-labels"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    table = own_labels_csv(tmp_path_factory.mktemp("own-labels"))
    result = runner.invoke(app, ["scan", "csv", "--root", str(table), "--name", NAME, "--workers", "0"])
    assert result.exit_code == 0, result.output
    return db.load_dataset(NAME)


def by_file(dataset, filename: str):
    return next(sample for sample in dataset if Path(sample.filepath).name == filename)


def test_the_label_set_is_the_dataset_s_own(dataset):
    assert label_set(dataset) == LABELS
    assert label_set(db.load_dataset(NAME)) == LABELS


def test_suggestions_name_only_the_dataset_s_classes(dataset):
    suggested = [s for s in dataset.values(names.SUGGESTED) if s]
    assert set(suggested) <= LABELS
    error = by_file(dataset, "camera.jpg")
    # The model sees a tripod, which this dataset does not label: no class of its fits, and it says so.
    assert error.category == names.SUSPECTED_MISLABEL and error.suggested_label in LABELS | {None}
    assert any("the model sees 'tripod', none of the dataset's classes" in r for r in error.reasons)


def test_a_label_true_for_one_of_two_objects_is_ambiguous(dataset):
    both = by_file(dataset, "cup_and_camera.jpg")
    assert both.category == names.AMBIGUOUS, both.reasons
    assert both.why.startswith("two objects: 'espresso' and ")
    assert both.reasons[0].startswith("two objects: 'espresso' is seen on where its evidence is strongest")
    assert both.suggested_label in LABELS | {None}


def test_the_review_view_lists_likely_label_errors_first(dataset):
    review = dataset.load_saved_view(names.REVIEW_VIEW)
    categories, scores = review.values([names.CATEGORY, names.SCORE])
    order = [names.REVIEW_ORDER.index(c) for c in categories]
    assert order == sorted(order) and categories[0] == names.SUSPECTED_MISLABEL
    for rank in set(order):  # within a category, highest mislabel_score first
        within = [s for o, s in zip(order, scores) if o == rank]
        assert within == sorted(within, reverse=True)
    assert len(review) == len(db.flagged_view(dataset))


def test_every_flagged_sample_says_why_in_a_few_words(dataset):
    for category, why, reasons in zip(*db.flagged_view(dataset).values([names.CATEGORY, names.WHY, names.REASONS])):
        assert why and len(why) <= 60 and "," not in why, why
        assert reasons[0]  # the decisive reason first; `why` is its short form
    assert set(dataset.match(db.F(names.CATEGORY) == names.OK).values(names.WHY)) <= {None}
