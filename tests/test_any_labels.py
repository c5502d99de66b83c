"""Any label set (real photos, the real model, a real database): a folder in classes of its own is
judged by a fitted, out-of-fold head, with its embeddings, neighbours and explanations; the
planted error ranks first; a class of two is handled; the second phase resumes to the same
result; ImageNet-labelled data keeps the model's own head."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import scan_sample
from synthetic_images import OWN_CLASSES, SMALL_CLASS, own_classes_folder
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.heads.fitted import fit_heads
from audit.score.estimate import LabelErrors
from audit.score.policy import judge
from audit.store import db

runner = CliRunner()
NAME = "own-classes-fitted"


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    folder, planted = own_classes_folder(tmp_path_factory.mktemp("own-classes"))
    result = runner.invoke(app, ["scan", "folder", "--root", str(folder), "--name", NAME, "--workers", "0",
                                 "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    return db.load_dataset(NAME), planted, result.output


def rows(dataset) -> dict[str, tuple]:
    """filepath -> (score, category, reasons, why) of every sample."""
    columns = dataset.values(["filepath", names.SCORE, names.CATEGORY, names.REASONS, names.WHY])
    return {path: values for path, *values in zip(*columns) for values in [tuple(values)]}


def test_a_label_set_of_its_own_is_judged_by_a_fitted_head(scanned):
    dataset, _planted, output = scanned
    assert "head: fit (" in output
    assert db.audit_info(dataset)["head"]["kind"] == "fit"
    predicted = set(dataset.distinct(f"{names.PREDICTIONS}.label"))
    assert predicted <= set(OWN_CLASSES) | {SMALL_CLASS}  # the dataset's classes, not ImageNet's
    assert dataset.exists(names.SCORE).count() >= len(dataset) - 2  # all but, at most, the class of two


def test_the_planted_error_ranks_first_with_a_score_and_a_reason(scanned):
    dataset, planted, _ = scanned
    first = db.flagged_view(dataset).first()
    assert first.filepath == str(planted)
    assert first[names.CATEGORY] == names.SUSPECTED_MISLABEL
    assert first[names.SCORE] > 0.9
    assert first[names.SUGGESTED] == "kitty"
    assert any("nearest neighbours are labelled 'kitty'" in reason for reason in first[names.REASONS])


def test_embeddings_are_what_the_model_s_classifier_reads(scanned, embedded_model):
    dataset, _, _ = scanned
    embeddings, signals = dataset.values([names.EMBEDDINGS, names.SIGNALS])
    assert all(e.shape == (1280,) and e.dtype == np.float32 for e in embeddings)
    logits = embedded_model.network.get_classifier()(torch.from_numpy(np.stack(embeddings)))
    # the model's own top class (kept beside the fitted head's) is the classifier's argmax on the embedding
    model_top = [s["model_top"][0][0] for s in signals]
    assert [embedded_model.classes[i] for i in logits.argmax(1).tolist()] == model_top


def test_the_top_ranked_get_class_maps_and_the_mirror_s_view_from_their_fold_head(scanned):
    from audit.scan.top_ranked import TOP_AT_LEAST

    dataset, planted, output = scanned
    sample = dataset.match(db.F("filepath") == str(planted)).first()
    assert sample[names.GRADCAM_PRED].map.max() == 255  # the given label's may be 0 throughout: no evidence for it
    assert not np.array_equal(sample[names.GRADCAM_PRED].map, sample[names.GRADCAM_GIVEN].map)
    assert set(sample[names.SIGNALS]["class_map_on_object"]) == {"pred", "given"}
    assert set(sample[names.SIGNALS]["views"]) == {"flip"}
    assert sample[names.SIGNALS]["views"]["flip"]["top_label"] in set(OWN_CLASSES) | {SMALL_CLASS}
    examined = set(dataset.exists(names.GRADCAM_PRED).values("id"))
    assert len(dataset) < TOP_AT_LEAST and examined == set(dataset.exists(names.SCORE).values("id"))
    assert set(dataset.exists(f"{names.SIGNALS}.views").values("id")) == examined  # no other image read again
    assert f"the top {len(examined)} examined again" in output


def test_a_class_of_two_is_judged_and_says_so(scanned):
    dataset, _, _ = scanned
    small = dataset.match(db.F(f"{names.GROUND_TRUTH}.label") == SMALL_CLASS)
    assert len(small) == 2
    for reasons in small.values(names.REASONS):
        assert any("only 2 samples are labelled 'teacup'" in r or "too few" in r for r in reasons), reasons


def test_out_of_fold_honesty(scanned):
    """Changing one sample's own label leaves its own probabilities exactly as they were."""
    dataset, _, _ = scanned
    ids, embeddings, labels = dataset.sort_by("_id").values(["id", names.EMBEDDINGS, f"{names.GROUND_TRUTH}.label"])
    embeddings = np.stack(embeddings)
    before = fit_heads(ids, embeddings, labels)
    row = labels.index("kitty")
    changed = list(labels)
    changed[row] = "launch"
    after = fit_heads(ids, embeddings, changed)
    np.testing.assert_array_equal(before.probabilities[row], after.probabilities[row])
    others = [r for r in range(len(ids)) if before.folds[r] != before.folds[row]]
    assert not np.allclose(before.probabilities[others], after.probabilities[others])  # they learnt the change


class StopAfter:
    """A progress display that stops the scan (as Ctrl-C does) at its ``calls``-th step of the second phase."""

    def __init__(self, calls: int):
        self.calls = calls

    def add_task(self, description, total=None):
        return description

    def advance(self, task, steps=1):
        if task == "judging":
            self.calls -= 1
            if self.calls == 0:
                raise KeyboardInterrupt


def test_the_second_phase_interrupted_and_resumed_gives_the_same_result(scanned, embedded_model, monkeypatch):
    from audit.scan import second_phase
    from audit.scan.options import ScanOptions
    from audit.scan.run import scan
    from audit.score.triage import rescore

    dataset, _, _ = scanned
    before = rows(dataset)
    dataset.set_values(names.HEAD_DONE, dict.fromkeys(dataset.values("id")), key_field="id")
    options = ScanOptions(workers=0, batch_size=4)
    monkeypatch.setattr(second_phase, "CHUNK", 10)  # samples written at a time: a few chunks here
    stopped = scan(dataset, embedded_model, options=options, progress=StopAfter(2))
    assert stopped.interrupted
    left = len(dataset.match(db.F(names.HEAD_DONE) == None))  # noqa: E711
    assert 0 < left < len(dataset)
    resumed = scan(dataset, embedded_model, options=options)
    assert not resumed.interrupted and resumed.judged == left
    rescore(dataset)
    after = rows(dataset)
    assert after.keys() == before.keys()
    for path, (score, category, reasons, why) in before.items():
        assert after[path][1:] == (category, reasons, why), path
        assert after[path][0] == pytest.approx(score, abs=1.5e-4), path  # stored at 4 decimals


def test_the_app_can_sort_by_similarity_and_plot_the_embeddings(scanned):
    dataset, planted, _ = scanned
    assert {names.SIMILARITY_KEY, names.VISUALIZATION_KEY} <= set(dataset.list_brain_runs())
    query = dataset.match(db.F("filepath") == str(planted)).first().id
    nearest = dataset.sort_by_similarity(query, k=3, brain_key=names.SIMILARITY_KEY)
    assert Path(nearest.first().filepath).parent.name in ("kitty", "bike")


def test_an_imagenet_dataset_keeps_the_model_s_head_and_its_scores():
    dataset = scan_sample("any-labels-imagenet")
    assert db.audit_info(dataset)["head"]["kind"] == "model"
    signals, scores = dataset.exists(names.SCORE).values([names.SIGNALS, names.SCORE])
    assert all("neighbours" in s for s in signals)
    # the neighbours' vote is shown, not scored, with the model's head: the score is the model's alone
    alone = [judge({k: v for k, v in s.items() if k != "neighbours"}).mislabel_score for s in signals]
    calibration = LabelErrors.read(db.audit_info(dataset)["label_errors"]).calibration
    assert scores == pytest.approx(calibration.apply(np.array(alone)).tolist(), abs=1e-4)


def test_a_near_duplicate_labelled_otherwise_is_named(scanned, embedded_model):
    """The mirror image of a photo, filed under another label: the vote names it, the verdict says so."""
    from PIL import Image

    from audit.heads import neighbours
    from audit.images import open_rgb

    dataset, _, _ = scanned
    filepaths, labels, embeddings = dataset.sort_by("_id").values(["filepath", f"{names.GROUND_TRUTH}.label",
                                                                  names.EMBEDDINGS])
    row = labels.index("launch")
    mirror = open_rgb(filepaths[row]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    with torch.inference_mode():
        _, activations = embedded_model.forward(embedded_model.preprocess(mirror)[None])
    twin = activations[embedded_model.target_layer].float().mean(dim=(2, 3))[0].numpy()
    vote = neighbours.votes(np.stack([*embeddings, twin]), [*labels, "portrait"], [*filepaths, "/x/mirror.jpg"])[row]
    assert vote["duplicate"]["filepath"] == "/x/mirror.jpg" and vote["duplicate"]["label"] == "portrait"
    assert vote["duplicate"]["similarity"] >= neighbours.DUPLICATE_SIMILARITY
    signals = {**dataset.match(db.F("filepath") == filepaths[row]).first()[names.SIGNALS], "neighbours": vote}
    verdict = judge(signals)
    assert any(r.startswith("a near-duplicate, mirror.jpg, is labelled 'portrait'") for r in verdict.reasons)
    assert verdict.category == names.OK  # the head is sure of 'launch': the twin is the one to flag


def test_the_planted_error_names_its_near_duplicates(scanned):
    """The planted cat is a crop of the photo the 'kitty' samples are crops of: the flagged one names
    a twin labelled 'kitty'; the twins are not called mislabelled, and where their head is sure of
    'kitty' they stay ok, naming the planted one."""
    dataset, planted, _ = scanned
    first = db.flagged_view(dataset).first()
    assert first.filepath == str(planted)
    assert any(r.startswith("a near-duplicate, kitty_") and r.endswith(")") and "is labelled 'kitty'" in r
               for r in first[names.REASONS])
    twins = dataset.match(db.F(f"{names.GROUND_TRUTH}.label") == "kitty")
    assert names.SUSPECTED_MISLABEL not in twins.values(names.CATEGORY)
    named = [reasons for category, reasons in zip(*twins.values([names.CATEGORY, names.REASONS]))
             if category == names.OK and any("planted_cat.jpg, is labelled 'bike'" in r for r in reasons)]
    assert named


def test_a_relabel_refits_the_head_without_the_network(scanned, embedded_model, tmp_path):
    """The planted error corrected: the next scan passes no image through the network for the
    first phase, refits the heads, and the sample is judged under its new label."""
    from audit.review.relabel import relabel_from_file
    from audit.scan.options import ScanOptions
    from audit.scan.run import scan
    from audit.score.triage import rescore

    dataset, planted, _ = scanned
    copy = dataset.clone(f"{NAME}-relabelled", persistent=True)
    sample = copy.match(db.F("filepath") == str(planted)).first()
    corrections = tmp_path / "relabel.csv"
    corrections.write_text(f"sample_id,filepath,new_label\n{sample.id},{planted},kitty\n")
    assert relabel_from_file(copy, corrections).applied
    summary = scan(copy, embedded_model, options=ScanOptions(workers=0, batch_size=4))
    assert summary.scanned == 0 and summary.judged == len(copy)
    rescore(copy)
    sample.reload()
    assert sample[names.SIGNALS]["given_label"] == "kitty" and sample[names.CATEGORY] == names.OK, sample[names.REASONS]
    assert sample[names.SIGNALS]["class_examples"] == dataset.count_values(f"{names.GROUND_TRUTH}.label")["kitty"] + 1


def test_the_principal_plane_is_pca():
    """The 2-D map of large datasets (computed page by page) is scikit-learn's PCA, up to each axis's sign."""
    from sklearn.decomposition import PCA

    from audit.scan.second_phase import EMBEDDINGS_PAGE, principal_plane

    rng = np.random.default_rng(0)
    matrix = (rng.standard_normal((EMBEDDINGS_PAGE + 123, 16)) * np.linspace(3, 0.1, 16)).astype(np.float32)
    ours, theirs = principal_plane(matrix), PCA(2).fit_transform(matrix.astype(np.float64))
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-3)
