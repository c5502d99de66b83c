"""A dataset with a label set of its own (real photos, the real model, a real database): suggestions
name only the dataset's classes, a label true for one of two objects is `ambiguous`, the review view
puts the likely label errors first, and each flagged sample says why in a few words."""

from pathlib import Path

import pytest
from synthetic_images import OWN_LABELS as LABELS
from synthetic_images import own_labels_csv
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.score.triage import label_set
from audit.store import db

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
    assert both.why.startswith("'espresso' and ") and both.why.endswith(": two objects")
    assert both.reasons[0].startswith("two objects: 'espresso' is seen where its evidence is strongest")
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


def test_the_label_s_standing_among_the_dataset_s_classes_alone(dataset):
    """Where the labels are some of the model's classes, the scan stores the label's standing among
    them alone (the model's probabilities renormalised), and the score is never below its margin."""
    from audit.score.policy import judge, normalised_margin_score
    from audit.signals import Distribution

    for signals in dataset.values(names.SIGNALS):
        among = signals["in_set"]
        assert among["given_prob"] == pytest.approx(signals["given_prob"] / (1 - signals["outside_prob"]), rel=1e-4)
        assert among["top_other"] in LABELS - {signals["given_label"]}
        assert judge(signals).mislabel_score >= normalised_margin_score(Distribution.read(among)) - 1e-6


def test_a_label_another_of_the_dataset_s_classes_beats_scores_as_that_margin(tmp_path):
    """The rocket labelled 'moped' in a dataset of missiles, mopeds and lakesides: among those
    three, 'missile' takes nearly all the probability, so the score is that margin's, above what
    the model's 1000 classes alone give it (some of the rocket's probability is on 'projectile')."""
    from audit.score.policy import judge, normalised_margin_score
    from audit.signals import Distribution

    photos = Path(__file__).resolve().parents[1] / "sample_data"
    table, missile = tmp_path / "labels.csv", tmp_path / "another_rocket.jpg"
    missile.write_bytes((photos / "rocket.jpg").read_bytes())
    table.write_text("filepath,label\n" + "".join(f"{path},{label}\n" for path, label in (
        (photos / "rocket.jpg", "moped"), (photos / "motorcycle.jpg", "moped"), (photos / "china_lake.jpg", "lakeside"),
        (missile, "missile"))))
    result = runner.invoke(app, ["scan", "csv", "--root", str(table), "--name", f"{NAME}-swap", "--workers", "0"])
    assert result.exit_code == 0, result.output
    swapped = db.load_dataset(f"{NAME}-swap").match(db.F("filepath") == str(photos / "rocket.jpg")).first()
    signals = swapped[names.SIGNALS]
    assert signals["in_set"]["top_other"] == "missile"
    without = judge({k: v for k, v in signals.items() if k != "in_set"}).mislabel_score
    score = judge(signals).mislabel_score  # the policy's (raw) score; the stored one is calibrated to the dataset
    assert score == pytest.approx(normalised_margin_score(Distribution.read(signals["in_set"])), abs=1e-4)
    assert score > without + 0.05 and swapped[names.CATEGORY] != names.OK
