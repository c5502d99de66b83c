"""The scoring is a pure function of stored signals: each category from the signals that define it.
The signals are made by the scan's own code (`audit.scan.evidence.sample_signals`) from class distributions."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from audit.data.classes import imagenet_names
from audit.scan.evidence import ModelEvidence, SampleEvidence, sample_signals
from audit.score.policy import consensus, for_new_label, judge, neighbour_reasons, sized
from audit.signals import NeighbourVote, Signals

NAMES = imagenet_names()
TABBY, ESPRESSO, TRIPOD = (NAMES.index(n) for n in ("tabby", "espresso", "tripod"))


def distribution(**probabilities) -> torch.Tensor:
    """A probability vector with the named classes' mass, the rest spread evenly."""
    vector = torch.zeros(1000)
    for name, p in probabilities.items():
        vector[{"tabby": TABBY, "espresso": ESPRESSO, "tripod": TRIPOD}[name]] = p
    rest = 1.0 - float(vector.sum())
    return vector + (vector == 0) * rest / int((vector == 0).sum())


@pytest.fixture(scope="module")
def signals():
    """signals(given, whole, **views): the audit_signals of a sample whose whole image and second
    opinions (flip, object, gt_box, given_evidence) have these class distributions. The signals need
    only the model's class names, so no network is loaded."""
    imagenet_classifier = SimpleNamespace(name="efficientnet_lite0", classes=NAMES)

    def make(given: int, whole: torch.Tensor, boxes=(), **views: torch.Tensor) -> dict:
        result = ModelEvidence(probabilities=whole, map=np.zeros((1, 1), np.uint8), boxes=list(boxes),
                               variance_ratio=[0.6, 0.05], visible_fraction=1.0, pc2=np.zeros((1, 1), np.uint8))
        return sample_signals([imagenet_classifier], SampleEvidence([result], [views]), NAMES[given], given)

    return make


def test_agreeing_confident_prediction_is_ok_and_scores_low(signals):
    verdict = judge(signals(TABBY, distribution(tabby=0.9, espresso=0.05), flip=distribution(tabby=0.9, espresso=0.05)))
    assert verdict.category == "ok" and verdict.mislabel_score < 0.1 and verdict.reasons == []
    assert verdict.suggested_label == "espresso" and verdict.why is None  # the fix should the label be wrong after all


def test_dominant_object_confidently_another_class_is_a_suspected_mislabel(signals):
    whole = distribution(espresso=0.95, tripod=0.001)
    verdict = judge(signals(TRIPOD, whole, flip=whole, object=distribution(espresso=0.9, tripod=0.001)))
    assert verdict.category == "suspected_mislabel" and verdict.suggested_label == "espresso"
    assert verdict.mislabel_score > 0.9
    assert any("dominant object is classified 'espresso' too" in r for r in verdict.reasons)
    # the decisive reason first, and in a few words for the App's tiles
    assert verdict.reasons[0] == "no evidence for 'tripod' in any view" and verdict.why == "'tripod'? no evidence"


def test_label_with_evidence_on_the_dominant_object_is_a_classifier_failure(signals):
    whole = distribution(espresso=0.4, tripod=0.2)
    verdict = judge(signals(TRIPOD, whole, flip=distribution(espresso=0.45, tripod=0.2),
                            object=distribution(tripod=0.45, espresso=0.3)))
    assert verdict.category == "classifier_failure"
    assert verdict.reasons[0].startswith("'tripod' is seen on the dominant object (at 0.45 there)")
    assert verdict.suggested_label == "espresso"  # the fix, should the reviewer find the label wrong


def test_with_your_predictions_the_suggestion_is_their_best_other_class_not_the_explaining_model_s(signals):
    whole = distribution(espresso=0.6, tripod=0.05)
    stored = Signals.read(signals(TRIPOD, whole, flip=whole, object=distribution(tabby=0.9, tripod=0.01)))
    assert judge(stored).suggested_label == "tabby"  # the model's head: the dominant object's class
    assert judge(replace(stored, head="given")).suggested_label == "espresso"


def test_a_dispute_with_a_label_most_likely_right_is_not_flagged_but_keeps_its_suggestion(signals):
    stored = signals(TRIPOD, distribution(tripod=0.3, espresso=0.2), flip=distribution(tripod=0.3, espresso=0.2))
    verdict = sized(judge(stored), Signals.read(stored), chance=0.02, queued=False)
    assert verdict.category == "ok" and verdict.why is None and verdict.mislabel_score == 0.02
    assert verdict.suggested_label == "espresso"


def test_a_label_the_model_favours_narrowly_is_a_classifier_failure_not_several_objects(signals):
    whole = distribution(tripod=0.3, espresso=0.2)
    verdict = judge(signals(TRIPOD, whole, flip=whole))
    assert verdict.category == "classifier_failure" and verdict.suggested_label == "espresso"
    assert verdict.reasons[0].startswith("the model is unsure: 'tripod' leads other classes by only 0.10")


@pytest.mark.parametrize("given, other", [(TRIPOD, "espresso"), (ESPRESSO, "tripod")])
def test_two_likely_classes_one_of_them_the_label_are_ambiguous(signals, given, other):
    whole = distribution(espresso=0.45, tripod=0.35)
    verdict = judge(signals(given, whole, flip=whole))
    assert verdict.category == "ambiguous" and verdict.suggested_label == other
    assert any(r.startswith(f"two classes fit: '{NAMES[given]}' at") for r in verdict.reasons)


def test_a_label_true_for_a_second_object_is_ambiguous_not_a_mislabel(signals):
    """The tennis ball on the retriever's head: the dominant object is another class, but the crop of
    the second Eigen-CAM component (or of the label's evidence) shows the label's class confidently."""
    whole = distribution(espresso=0.9, tripod=0.01)
    dominant = distribution(espresso=0.95, tripod=0.001)
    alone = judge(signals(TRIPOD, whole, flip=whole, object=dominant))
    both = judge(signals(TRIPOD, whole, flip=whole, object=dominant, second_object=distribution(tripod=0.8)))
    assert alone.category == "suspected_mislabel"
    assert both.category == "ambiguous" and both.mislabel_score == alone.mislabel_score
    assert any("two objects: 'tripod' is seen on the second object (at 0.80)" in r for r in both.reasons)


def test_a_suggestion_is_one_of_the_dataset_s_classes(signals):
    whole = distribution(espresso=0.7, tabby=0.2, tripod=0.01)
    stored = signals(TRIPOD, whole, flip=whole, object=distribution(espresso=0.9, tripod=0.001))
    assert judge(stored).suggested_label == "espresso"
    mine = judge(stored, label_set=frozenset({"tripod", "tabby"}))
    assert mine.category == "suspected_mislabel" and mine.suggested_label == "tabby"
    assert "the model sees 'espresso', none of the dataset's classes: the closest of them is 'tabby'" in mine.reasons
    alone = judge(stored, label_set=frozenset({"tripod"}))
    assert alone.suggested_label is None and any("no other class of the dataset fits" in r for r in alone.reasons)


def test_ground_truth_box_off_the_object_is_a_bad_box(signals):
    whole = distribution(tabby=0.9)
    verdict = judge(signals(TABBY, whole, flip=whole, object=whole, gt_box=distribution(espresso=0.9, tabby=0.01)))
    assert verdict.category == "bad_box"


def test_views_change_the_score_and_can_be_ablated(signals):
    whole = distribution(espresso=0.5, tripod=0.4)
    with_views = signals(TRIPOD, whole, flip=distribution(tripod=0.8), object=distribution(tripod=0.8))
    assert judge(with_views).mislabel_score < 0.5 < judge(with_views, use_views=False).mislabel_score


def test_unreadable_and_unknown_labels(signals):
    assert judge({"error": "OSError: truncated"}).category == "error"
    unknown = signals(TABBY, distribution(tabby=0.9))
    unknown.update(given_label="my own class", given_index=None)
    verdict = judge(unknown)
    assert verdict.mislabel_score is None and "not one of the model's classes" in verdict.reasons[0]


def together(signals: dict) -> dict:
    read = Signals.read(signals)
    return consensus(read, read.views).stored()


def test_the_labels_evidence_crop_testifies_only_for_the_label(signals):
    whole = distribution(espresso=0.6, tripod=0.2)
    crop = distribution(tripod=0.7)  # the crop where 'tripod' has its evidence: a tripod is there
    plain = signals(TRIPOD, whole, flip=whole)
    testified = signals(TRIPOD, whole, flip=whole, given_evidence=crop)
    agreed, plain_agreed = together(testified), together(plain)
    assert agreed["given_prob"] == pytest.approx((0.2 + 0.2 + 0.7) / 3, abs=1e-5)
    assert agreed["max_other_prob"] == pytest.approx(plain_agreed["max_other_prob"])
    assert judge(testified).mislabel_score < judge(plain).mislabel_score
    # a crop less sure of the label than the whole image does not lower its standing
    unsure = signals(TRIPOD, whole, flip=whole, given_evidence=distribution(tripod=0.05))
    assert together(unsure)["given_prob"] == pytest.approx(plain_agreed["given_prob"])
    # a crop chosen for a wrong label does not water down the confident true class
    wrong = signals(TRIPOD, distribution(espresso=0.9, tripod=0.001), given_evidence=distribution(tabby=0.5))
    assert together(wrong)["max_other_prob"] == pytest.approx(0.9, abs=1e-5)
    assert judge(wrong).category == "suspected_mislabel"


def test_a_box_over_the_whole_view_is_named_in_the_reasons_of_a_disputed_label(signals):
    whole = distribution(espresso=0.95, tripod=0.001)
    spread = judge(signals(TRIPOD, whole, boxes=[[0.0, 0.0, 1.0, 0.95]], flip=whole))
    compact = judge(signals(TRIPOD, whole, boxes=[[0.3, 0.3, 0.4, 0.4]], flip=whole))
    assert any("singles out no one object (its box spans 95% of what the model saw)" in r for r in spread.reasons)
    assert not any("no one object" in r for r in compact.reasons)
    assert (spread.category, spread.mislabel_score) == (compact.category, compact.mislabel_score)  # information only


def test_a_new_label_is_judged_on_the_whole_image_from_the_stored_top_classes(signals):
    """After a relabel: the stored views were chosen for the old label and are left out; the new
    label's probability comes from the stored top 5, or is bounded by the 5th when not among them."""
    stored = signals(ESPRESSO, distribution(tripod=0.8, espresso=0.1), flip=distribution(tripod=0.8, espresso=0.1))
    assert judge(stored).category == "suspected_mislabel"
    fixed = for_new_label(stored, "tripod", TRIPOD)
    assert "views" not in fixed and "consensus" not in fixed
    assert (fixed["given_prob"], fixed["max_other_prob"], fixed["given_rank"]) == pytest.approx((0.8, 0.1, 1))
    verdict = judge(fixed)
    assert verdict.category == "ok" and verdict.mislabel_score == pytest.approx((1 - 0.7) / 2)
    assert verdict.reasons[0].startswith("relabelled from 'espresso' after the scan")

    outside = for_new_label(stored, "tabby", TABBY)  # 0.1 / 998 here: not among the top 5
    assert outside["given_prob_bound"] and outside["given_prob"] == pytest.approx(stored["top_probs"][-1])
    verdict = judge(outside)
    assert verdict.category == "suspected_mislabel" and verdict.suggested_label == "tripod"
    assert "'tabby' below" in verdict.reasons[3] and "(not in the top 5)" in verdict.reasons[3]
    unknown = for_new_label(stored, "widget", None)  # not a class the model is known to have
    assert judge(unknown).mislabel_score is None


def test_the_consensus_is_formed_at_scoring_so_a_rescore_can_change_it(signals, monkeypatch):
    """The views' stored top classes are enough to average them at scoring time: the consensus of
    the whole image and its mirror equals the mean of the two distributions, and dropping the mirror
    from NEUTRAL_VIEWS changes the score without the model."""
    import audit.score.policy

    whole, mirror = distribution(espresso=0.5, tripod=0.3), distribution(espresso=0.2, tripod=0.6)
    stored = signals(TRIPOD, whole, flip=mirror)
    exact = (whole + mirror) / 2
    agreed = together(stored)
    assert agreed["given_prob"] == pytest.approx(float(exact[TRIPOD]), abs=1e-6)
    assert agreed["max_other_prob"] == pytest.approx(float(exact[ESPRESSO]), abs=1e-6)
    assert agreed["top_label"] == "tripod"
    with_mirror = judge(stored).mislabel_score
    monkeypatch.setattr(audit.score.policy, "NEUTRAL_VIEWS", ("gt_box",))
    assert judge(stored).mislabel_score == pytest.approx((1 - (0.3 - 0.5)) / 2, abs=1e-6) != with_mirror


def test_the_neighbours_reason_counts_them_in_words_that_fit_one_or_many():
    one = NeighbourVote(k=1, other_share=1.0, label="moped", label_share=1.0)
    many = NeighbourVote(k=10, other_share=0.7, label="dog", label_share=0.6)
    assert neighbour_reasons(one, "tripod") == ["its nearest neighbour is labelled 'moped'"]
    assert neighbour_reasons(many, "cat") == ["6 of its 10 nearest neighbours are labelled 'dog'"]
    assert neighbour_reasons(many, "dog") == []
