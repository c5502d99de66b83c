"""The second phase at scale: the approximate neighbours against the exact search, the fitted head
from pages against scikit-learn's, embeddings read in pages by id (float16 on request), and the
similarity index skipped above its size with one line kept in the dataset's info."""

import numpy as np
import pytest

from audit import names
from audit.heads import fitted, neighbours
from audit.store import db


def clustered(count: int, width: int = 48, clusters: int = 12, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Non-negative rows around a few centres (like pooled activations), and their cluster as label."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, (clusters, width))
    which = rng.integers(clusters, size=count)
    rows = np.maximum(centres[which] + rng.normal(0, 0.6, (count, width)), 0).astype(np.float32)
    return rows, [f"c{c}" for c in which]


def test_the_approximate_neighbours_are_the_exact_ones_with_their_exact_cosines():
    pytest.importorskip("faiss")
    rows, _ = clustered(4000)
    exact_rows, exact_similarity = neighbours.nearest(rows, 10, exact=True)
    found, similarity = neighbours.nearest(rows, 10, exact=False)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact_rows)])
    assert recall >= 0.95, recall
    assert not (found == np.arange(len(rows))[:, None]).any()  # never itself
    assert (np.diff(similarity, axis=1) <= 1e-6).all()  # nearest first
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(similarity, np.einsum("rkw,rw->rk", unit[found], unit), atol=1e-5)  # exact cosines
    assert np.abs(similarity.mean(axis=1) - exact_similarity.mean(axis=1)).max() < 0.02
    half_found, half_similarity = neighbours.nearest(rows.astype(np.float16), 10, exact=False)
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(half_found, exact_rows)]) >= 0.95


def test_the_search_is_exact_below_its_size_and_approximate_from_it(monkeypatch):
    pytest.importorskip("faiss")
    rows, _ = clustered(600)
    called = []
    monkeypatch.setattr(neighbours, "approximate_nearest", lambda x, k: called.append(len(x)) or ("approximate", k))
    neighbours.nearest(rows, 5)
    assert not called
    monkeypatch.setattr(neighbours, "APPROXIMATE_FROM", 600)
    assert neighbours.nearest(rows, 5) == ("approximate", 5) and called == [600]


def test_the_votes_are_read_one_at_a_time_and_name_a_near_duplicate():
    rows, labels = clustered(300)
    twin = rows[7] * 1.01
    votes = neighbours.votes(np.vstack([rows, twin]), [*labels, "other"], [f"/x/{i}.jpg" for i in range(301)])
    assert len(votes) == 301 and len(votes[:3]) == 3 and votes[-1] == votes[300]
    assert votes[7]["duplicate"] == {"filepath": "/x/300.jpg", "label": "other", "similarity": pytest.approx(1.0, abs=1e-5)}
    assert 0 <= votes[0]["other_share"] <= 1 and 0 <= votes[0]["unlike"] <= 1
    with pytest.raises(IndexError):
        votes[301]


@pytest.mark.parametrize("clusters", [4, 2])
def test_the_fitted_head_is_scikit_learn_s_logistic_regression(monkeypatch, clusters):
    """Each fold's head, fitted in torch from float16 pages, is scikit-learn's penalised logistic
    regression on the same standardised rows (C = PENALTY_SAMPLES / rows): the same probabilities
    within a few thousandths; with two classes too (scikit-learn fits one row there)."""
    from sklearn.linear_model import LogisticRegression

    rows, labels = clustered(1500, width=32, clusters=clusters, seed=1)
    labels[:40] = ["c0"] * 40  # some wrong labels
    ids = [f"{i:024x}" for i in range(len(rows))]
    monkeypatch.setattr(fitted, "PAGE_ROWS", 256)  # several pages
    paged = fitted.fit_heads(ids, rows.astype(np.float16), labels)
    assert paged.classes == sorted(set(labels)) and (paged.class_seen > 0).all()
    targets = np.array([paged.classes.index(label) for label in labels])
    x = rows.astype(np.float16).astype(np.float32)
    for fold in range(fitted.FOLDS):
        train, mine = paged.folds != fold, paged.folds == fold
        mean, scale = x[train].mean(0), x[train].std(0)
        reference = LogisticRegression(C=fitted.PENALTY_SAMPLES / train.sum(), max_iter=1000, tol=1e-8)
        reference.fit((x[train] - mean) / scale, targets[train])
        expected = reference.predict_proba((x[mine] - mean) / scale)
        assert np.abs(paged.probabilities[mine] - expected).max() < 0.01


def test_embeddings_are_read_in_pages_by_id_and_the_similarity_index_is_skipped_above_its_size(monkeypatch):
    from audit.scan import second_phase

    db.ensure_database()
    dataset = db.fo.Dataset()
    rows, labels = clustered(23, width=8)
    dataset.add_samples([db.fo.Sample(filepath=f"/x/{i}.jpg", embeddings=row) for i, row in enumerate(rows)])
    view = dataset.sort_by("_id")
    monkeypatch.setattr(second_phase, "EMBEDDINGS_PAGE", 5)
    full = second_phase.stored_embeddings(view, names.EMBEDDINGS, len(view))
    assert full.dtype == np.float32
    np.testing.assert_array_equal(full, np.stack(view.values(names.EMBEDDINGS)))
    half = second_phase.stored_embeddings(view, names.EMBEDDINGS, len(view), half=True)
    assert half.dtype == np.float16 and np.abs(half - full).max() < 0.01

    assert second_phase.index_embeddings(view) is None
    assert dataset.has_brain_run(names.SIMILARITY_KEY) and db.audit_info(dataset)["similarity_index"] == "built"
    monkeypatch.setattr(second_phase, "SIMILARITY_INDEX_UP_TO", 20)
    line = second_phase.index_embeddings(view, second_phase.principal_plane(full))
    assert line.startswith("similarity index not built: 23 samples") and "docs/scale.md" in line
    assert db.audit_info(dataset)["similarity_index"] == line
    assert not dataset.has_brain_run(names.SIMILARITY_KEY) and dataset.has_brain_run(names.VISUALIZATION_KEY)
