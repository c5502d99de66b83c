"""The review queue on the scanned sample photos: where each stage ends in the review view, the marks
counted against it, and the App's colours of the given label and the prediction."""

import pytest
from conftest import scan_sample

from audit import names
from audit.review import app as review_app
from audit.review.queue import review_queue
from audit.review.relabel import mark_samples
from audit.signals import WHOLE_VIEW
from audit.store import db


@pytest.fixture(scope="module")
def dataset():
    return scan_sample("review-queue")


def test_the_last_sample_of_each_stage_says_where_the_stage_ends(dataset):
    review = db.review_view(dataset)
    categories, ends = review.values([names.CATEGORY, names.REVIEW_END])
    marked = [(index, end) for index, end in enumerate(ends) if end]
    expected = [(len(categories) - 1 - categories[::-1].index(c), f"last of {categories.count(c)} {names.REVIEW_STAGES[c]}")
                for c in names.REVIEW_ORDER if c in categories]
    assert marked == expected and marked[0][1] == "last of 3 likely wrong labels"
    assert len(dataset.exists(names.REVIEW_END)) == len(expected)  # on no other sample


def test_marks_count_against_their_stage(dataset):
    before = {stage.category: stage for stage in review_queue(dataset)}
    assert list(before) == [c for c in names.REVIEW_ORDER if c in before]
    assert all(stage.reviewed == 0 for stage in before.values())
    mislabels = db.flagged_view(dataset, names.SUSPECTED_MISLABEL).values("id")
    assert len(mislabels) == 3  # the sample photos' three deliberate errors
    mark_samples(dataset, mislabels[:2], names.RELABEL_TAG, new_label="tripod")
    mark_samples(dataset, mislabels[2:], names.OK_TAG)
    after = {stage.category: stage for stage in review_queue(dataset)}
    first = after.pop(names.SUSPECTED_MISLABEL)
    assert first.progress == "3 of 3 likely wrong labels reviewed (relabel 2 · label_ok 1)"
    assert {c: s.reviewed for c, s in after.items()} == {c: 0 for c in before if c != names.SUSPECTED_MISLABEL}


def test_the_given_label_and_the_prediction_keep_a_colour_each(dataset):
    review_app.apply_app_defaults(dataset)
    fields = {f["path"]: f for f in dataset.app_config.color_scheme.fields}
    labels = set(dataset.distinct("ground_truth.label")) | set(dataset.distinct("predictions.label"))
    for path, colour in (("ground_truth", review_app.GIVEN_COLOUR), ("predictions", review_app.PREDICTION_COLOUR)):
        assert fields[path]["fieldColor"] == colour
        assert {v["value"] for v in fields[path]["valueColors"]} >= labels  # every class, whichever field shows it
        assert {v["color"] for v in fields[path]["valueColors"]} == {colour}
    assert review_app.GIVEN_COLOUR != review_app.PREDICTION_COLOUR
    assert {review_app.GIVEN_COLOUR, review_app.PREDICTION_COLOUR}.isdisjoint(names.CATEGORY_COLOURS.values())


def test_the_saved_views_leave_out_a_box_that_spans_the_view_and_say_why(dataset):
    signals, notes = dataset.values([names.SIGNALS, names.EXPLAIN_NOTE])
    spans = [s["cam_box_area"] / s["visible_fraction"] for s in signals]
    assert [bool(note) for note in notes] == [share >= WHOLE_VIEW for share in spans]  # no photo is small
    assert any(notes) and not all(notes)
    review = dataset.load_saved_view(names.REVIEW_VIEW)
    for note, boxes, heatmap in zip(*review.values([names.EXPLAIN_NOTE, f"{names.EIGENCAM_BOX}.detections",
                                                    names.EIGENCAM])):
        assert bool(boxes) != bool(note) and heatmap is not None
        assert note is None or note.startswith("box left out: it spans")
