"""The scan's second phase, once every sample has its embedding: the neighbours' vote for all, and
with a fitted head the fit and each sample's out-of-fold probabilities, from the stored embeddings
alone: no image is read again. (The top-ranked samples' mirror image and class maps, through
their fold's head, come after the scoring: `audit.scan.top_ranked`.)

Resumable like the first phase: the phase's key (the scan key, the head, and every sample's
label) is written to ``audit_head_done`` last, with the sample's fields; a killed run refits the
same heads (folds from the ids, seeded; the fit is deterministic) and redoes only the samples
without the key. Relabelled or newly added samples change the key: the heads are refitted from the
stored embeddings, without running the network.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, replace

import numpy as np
import torch

from audit import names
from audit.errors import InputError
from audit.heads import given as given_head
from audit.heads import neighbours
from audit.heads.choice import FIT, GIVEN, MODEL, HeadChoice
from audit.heads.fitted import FOLDS, SEED, FittedHeads, fit_heads
from audit.models.registry import AuditModel
from audit.scan.evidence import distribution_signals, embeddings_field, whole_image_signals
from audit.scan.kernel import BulkWriter
from audit.signals import NeighbourVote, Signals
from audit.store import db

PHASE_VERSION = 3  # bump when the fields this phase writes change meaning
CHUNK = 1000  # samples whose signals are read and written at a time
# The shares the given predictions were weighed at, against their neighbours' and the model's own (`audit.heads.given`).
GIVEN_SHARES = ("given_share", "given_share_against_model")
EMBEDDINGS_PAGE = 5000  # embeddings read from the database at a time
PLOT_TSNE_FROM, PLOT_TSNE_UP_TO = 100, 20_000
# t-SNE's steps (FiftyOne Brain's default 1,000): on cifar10-dev's 3,083 embeddings the map at 500 shows
# the same clusters in 63 % of the time (docs/how-it-works.md#for-the-app-similarity-index-and-embeddings-map).
TSNE_ITERATIONS = 500
# From this many samples the embeddings are held as float16 (the fitted head and the neighbours read
# them a page at a time as float32), and above SIMILARITY_INDEX_UP_TO FiftyOne Brain's similarity
# index is not built (see `index_embeddings`).
HALF_PRECISION_FROM = 250_000
SIMILARITY_INDEX_UP_TO = 200_000
# A sample judged again keeps no class maps of an earlier fit (`audit.scan.top_ranked` draws them again).
NO_CLASS_MAPS = {names.GRADCAM_PRED: None, names.GRADCAM_GIVEN: None}


@dataclass
class SecondPhaseSummary:
    judged: int  # samples written in this run
    head: str
    fitted: FittedHeads | None = None  # the first model's fold heads, where this run fitted them


def phase_key(scan_key: str, choice: HeadChoice, ids: list[str], labels: list[str | None],
              predictions: str | None = None) -> str:
    """A digest of what the phase's results depend on: samples whose key differs are redone."""
    digest = hashlib.sha256("\n".join(f"{i}:{label}" for i, label in zip(ids, labels)).encode()).hexdigest()
    settings = {"scan": scan_key, "head": choice.kind, "folds": FOLDS, "seed": SEED, "k": neighbours.K,
                "version": PHASE_VERSION, "labels": digest, "predictions": predictions}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run(root, models: list[AuditModel], scan_key: str, choice: HeadChoice, progress=None) -> SecondPhaseSummary:
    """The second phase over the samples of ``root`` scanned under ``scan_key`` (see the module)."""
    scanned = scanned_samples(root, scan_key)
    label_path = f"{db.label_field(root)}.label"
    ids, filepaths, labels, marks = scanned.values(["id", "filepath", label_path, names.HEAD_DONE])
    if not ids:
        return SecondPhaseSummary(0, choice.kind)
    given_record = db.audit_info(root).get("predictions") if choice.kind == GIVEN else None
    key = phase_key(scan_key, choice, ids, labels, given_record and given_record["sha256"])
    todo = [row for row, mark in enumerate(marks) if mark != key]
    if not todo:
        return SecondPhaseSummary(0, choice.kind)
    embeddings = [stored_embeddings(scanned, embeddings_field(models, index), len(ids), half=len(ids) >= HALF_PRECISION_FROM)
                  for index in range(len(models))]
    around = neighbours.graph(embeddings[0], labels)
    votes = neighbours.votes(embeddings[0], labels, filepaths, around=around)
    fitted = [fit_heads(ids, e, labels, progress=progress) for e in embeddings] if choice.kind == FIT else None
    given = _given(root, scanned, ids, around[0], labels, weigh_model=choice.model_knows_labels) if choice.kind == GIVEN else None
    own = _own_head_quantiles(root, ids) if choice.kind == MODEL and not models[0].is_imagenet else None
    plane = principal_plane(embeddings[0]) if len(ids) > PLOT_TSNE_UP_TO else None
    del embeddings  # FiftyOne Brain's similarity index reads its own copy at the end
    task = progress.add_task("judging", total=len(todo)) if progress else None
    writer = BulkWriter(root, key, marker=names.HEAD_DONE)
    for start in range(0, len(todo), CHUNK):
        rows = todo[start:start + CHUNK]
        stored = db.stored_dicts(root, [ids[r] for r in rows], names.SIGNALS)
        for row in rows:
            signals = replace(Signals.read(stored[ids[row]]), neighbours=NeighbourVote.read(votes[row]))
            if own is not None and not np.isnan(own[row]):
                signals = replace(signals, label_quantile=float(own[row]))
            if given is not None:
                signals, prediction = _given_signals(signals, given, row, labels[row], keep_views=choice.model_knows_labels)
                writer.add(ids[row], {names.SIGNALS: signals.stored(), names.PREDICTIONS: prediction})
            elif fitted is not None:
                signals, prediction = _fitted_signals(signals, fitted, row, labels[row])
                writer.add(ids[row], {names.SIGNALS: signals.stored(), names.PREDICTIONS: prediction, **NO_CLASS_MAPS})
            else:
                writer.add(ids[row], {names.SIGNALS: signals.stored()})
        writer.flush()
        if progress:
            progress.advance(task, len(rows))
    skipped = index_embeddings(scanned, plane)
    if skipped and progress:
        progress.console.print(skipped, markup=False, highlight=False)
    elif skipped:
        print(skipped, file=sys.stderr)
    if given is not None:
        db.save_audit_info(root, head={**choice.info(), **dict(zip(GIVEN_SHARES, (given.share, given.share_against_model)))})
    return SecondPhaseSummary(writer.written, choice.kind, fitted[0] if fitted else None)


def head_info(root, choice: HeadChoice) -> dict:
    """``dataset.info["audit"]["head"]`` as a scan starts: the chosen head, with the shares an earlier
    second phase weighed the same head's predictions at (`GIVEN_SHARES`): a scan with nothing left to
    judge keeps them, and the phase replaces them wherever it runs again (new predictions or labels)."""
    earlier = db.audit_info(root).get("head") or {}
    kept = {name: earlier[name] for name in GIVEN_SHARES if name in earlier} \
        if {key: earlier.get(key) for key in ("kind", "why")} == choice.info() else {}
    return {**choice.info(), **kept}


def scanned_samples(root, scan_key: str):
    """The samples of ``root`` the first phase scanned under ``scan_key`` (with an embedding), in ``_id`` order."""
    return root.match(db.F(names.DONE) == scan_key).exists(names.EMBEDDINGS).sort_by("_id", create_index=False)


def fitted_heads(root, scan_key: str, progress=None) -> FittedHeads:
    """The first model's fold heads fitted again from the stored embeddings, as `run` fits them."""
    scanned = scanned_samples(root, scan_key)
    ids, labels = scanned.values(["id", f"{db.label_field(root)}.label"])
    return fit_heads(ids, stored_embeddings(scanned, names.EMBEDDINGS, len(ids)), labels, progress=progress)


@dataclass
class GivenJudgement:
    """The user's predictions with the model's and their neighbours' weighed in (`audit.heads.given`), in their classes."""

    classes: list[str]
    probabilities: np.ndarray
    quantiles: np.ndarray
    share: float  # the given probabilities' own share against their neighbours'
    share_against_model: float | None  # their share against the model's, where its head knows the labels (else None)


def _given(root, scanned, ids: list[str], nearest: np.ndarray, labels: list[str | None], *,
           weigh_model: bool) -> GivenJudgement:
    """The given probabilities of the scanned samples (``ids``), with the model's own weighed in where
    ``weigh_model`` (its head knows the labels: `audit.heads.given.weigh_model`), then their
    neighbours' (``nearest``: the rows of each one's nearest in the embeddings, as the vote reads them)."""
    record = db.audit_info(root)["predictions"]
    lacking = len(scanned) - len(scanned.exists(names.GIVEN_PROBABILITIES))
    if lacking:
        raise InputError(f"{lacking} samples have no predictions (added since {record['source']} was given): "
                         "scan again with --predictions FILE covering them, or --head fit")
    classes = record["classes"]
    probabilities = stored_embeddings(scanned, names.GIVEN_PROBABILITIES, len(nearest))
    indices = [classes.index(label) if label in classes else None for label in labels]
    share_against_model = None
    if weigh_model:
        model = _model_probabilities(root, ids, classes)
        probabilities, share_against_model = given_head.weigh_model(probabilities, model, indices)
    smoothed, share = given_head.smooth(probabilities, nearest, indices)
    return GivenJudgement(classes, smoothed, given_head.label_quantiles(smoothed, indices), share, share_against_model)


def _model_probabilities(root, ids: list[str], classes: list[str]) -> np.ndarray:
    """The model's own probabilities of ``classes`` for each of ``ids``, from the first phase's stored
    signals: the whole image averaged with its mirror image where the scan asked for one, over
    ``classes`` alone (a class outside a stored top counts 0; where none is in it, all are equal)."""
    column = {label: index for index, label in enumerate(classes)}
    probabilities = np.zeros((len(ids), len(classes)), dtype=np.float32)
    for row, signals in _each_stored_signals(root, ids):
        mirror = (signals.views or {}).get("flip")
        tops = [_model_top(signals)] + ([mirror.top] if mirror else [])
        for top in tops:
            for label, probability in top or []:
                if label in column:
                    probabilities[row, column[label]] += probability / len(tops)
    totals = probabilities.sum(axis=1, keepdims=True)
    return np.where(totals > 0, probabilities / np.maximum(totals, 1e-12), 1.0 / len(classes)).astype(np.float32)


def _own_head_quantiles(root, ids: list[str]) -> np.ndarray:
    """Where the model is the user's own classifier (its head judging, not ImageNet's): each label's
    rank by self-confidence on the whole image averaged with its mirror image (where it was asked for
    a second opinion), as a share from 0 to 1 (NaN where the model does not know the label). On
    cifar10n-dev's majority labels, the user's Lite0: AP 0.792 against 0.779 on the whole image alone;
    the normalised margin ranks far below (0.695), the consensus with the object crops too (0.718:
    a crop of a 32-pixel photo is a few pixels)."""
    given, other = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
    for row, signals in _each_stored_signals(root, ids):
        if signals.given_index is None or signals.given_prob is None:
            continue
        mirror = (signals.views or {}).get("flip")
        given[row] = signals.given_prob if mirror is None else (signals.given_prob + mirror.given_prob) / 2
        other[row] = signals.max_other_prob
    known = ~np.isnan(given)
    quantiles = np.full(len(ids), np.nan)
    if known.any():
        quantiles[known] = given_head.standing_quantiles(given[known], other[known], margin_share=0.0)
    return quantiles


def _model_top(stored: Signals) -> list | None:
    """The model's own top classes: kept as ``model_top`` where a second phase judged before, else the first phase's."""
    return stored.model_top if stored.head in (FIT, GIVEN) else stored.top


def _each_stored_signals(root, ids: list[str]):
    """(row, stored signals) of each of ``ids``, read CHUNK samples at a time."""
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        stored = db.stored_dicts(root, chunk, names.SIGNALS)
        for offset, sample_id in enumerate(chunk):
            yield start + offset, Signals.read(stored[sample_id] or {})


def _given_signals(stored: Signals, given: GivenJudgement, row: int, label: str | None,
                   keep_views: bool) -> tuple[Signals, object]:
    """The sample's signals judged by the user's predictions (their neighbours' weighed in): the
    whole image's figures and the label's quantile; the first phase's Eigen-CAM figures, and its
    second opinions where the model's own head knows the labels."""
    classes = given.classes
    given_index = classes.index(label) if label in classes else None
    whole = distribution_signals(torch.from_numpy(given.probabilities[row]), given_index, classes)
    quantile = given.quantiles[row]
    signals = replace(whole_image_signals(whole, label, given_index, classes),
                      cam_variance_ratio=stored.cam_variance_ratio, visible_fraction=stored.visible_fraction,
                      cam_box_area=stored.cam_box_area, second_object_iou=stored.second_object_iou,
                      class_map_on_object=stored.class_map_on_object if keep_views else None,
                      views=stored.views if keep_views else None, neighbours=stored.neighbours,
                      model_top=_model_top(stored), head=GIVEN,
                      classes=len(classes), label_quantile=None if np.isnan(quantile) else float(quantile))
    return signals, db.fo.Classification(label=whole.top_label, confidence=whole.top_prob)


def stored_embeddings(view, field: str, count: int, half: bool = False) -> np.ndarray:
    """The ``field`` vectors of ``view``'s ``count`` samples (``view`` sorted by id), in its order, as
    one float32 matrix (float16 with ``half``: 2.6 GB at a million samples of 1,280 numbers, against
    5.1 GB), read a page at a time into it (never a second copy of them all). Each page starts after
    the previous page's last id, so that reading the N samples costs N, not N² / page as skipping would."""
    matrix = None
    last = None
    filled = 0
    while filled < count:
        page_view = view if last is None else view.mongo([{"$match": {"_id": {"$gt": last}}}])
        page_ids, page = page_view.limit(EMBEDDINGS_PAGE).values(["_id", field])
        if not page_ids:
            break
        page = np.asarray(page, dtype=np.float16 if half else np.float32)
        if matrix is None:
            matrix = np.empty((count, page.shape[1]), dtype=page.dtype)
        matrix[filled:filled + len(page)] = page[:count - filled]
        filled += len(page)
        last = page_ids[-1]
    return matrix


def principal_plane(matrix: np.ndarray) -> np.ndarray:
    """The rows of ``matrix`` projected on its first two principal components, (N, 2): exact PCA
    from the covariance summed a page at a time, so no centred copy of the matrix is made (pages of
    a float16 matrix are multiplied in float32, the sums kept in float64)."""
    work = np.float32 if matrix.dtype == np.float16 else np.float64
    mean = matrix.mean(axis=0, dtype=np.float64)
    covariance = np.zeros((matrix.shape[1], matrix.shape[1]))
    for start in range(0, len(matrix), EMBEDDINGS_PAGE):
        page = (matrix[start:start + EMBEDDINGS_PAGE] - mean).astype(work)
        covariance += page.T @ page
    components = np.linalg.eigh(covariance)[1][:, ::-1][:, :2]
    return np.concatenate([(matrix[start:start + EMBEDDINGS_PAGE] - mean) @ components
                           for start in range(0, len(matrix), EMBEDDINGS_PAGE)])


def index_embeddings(view, plane: np.ndarray | None = None) -> str | None:
    """FiftyOne Brain runs on the stored embeddings of ``view``'s samples, for the App: a similarity
    index (sort by similarity from a flagged sample; scikit-learn backend, cosine) and a 2-D map
    (the Embeddings panel): UMAP where umap-learn is installed, else t-SNE, or PCA for fewer than
    PLOT_TSNE_FROM samples; above PLOT_TSNE_UP_TO (where t-SNE's time grows too fast) ``plane``,
    the PCA the second phase computed on its own copy of the embeddings (FiftyOne Brain's would
    read and convert another, the phase's peak of memory at 50,000 samples).

    Above SIMILARITY_INDEX_UP_TO samples the similarity index is not built: the scikit-learn
    backend holds every vector in memory (and stores them all with the run: 5 GB at a million
    samples). Returns then the line that says so and how to build one in a vector database; the
    same line is kept in ``dataset.info["audit"]["similarity_index"]``. None when it was built."""
    import importlib.util
    import logging

    import fiftyone.brain as fob

    root = view._root_dataset
    for key in (names.SIMILARITY_KEY, names.VISUALIZATION_KEY):
        if root.has_brain_run(key):
            root.delete_brain_run(key)
    count = len(view)
    if count < 3:
        return None
    method = ("umap" if importlib.util.find_spec("umap") else "tsne") if PLOT_TSNE_FROM <= count <= PLOT_TSNE_UP_TO else "pca"
    mapped = ({"points": plane} if plane is not None else
              {"embeddings": names.EMBEDDINGS, "method": method, "seed": SEED, "verbose": False,
               **({"max_iters": TSNE_ITERATIONS} if method == "tsne" else {})})
    skipped = None
    if count > SIMILARITY_INDEX_UP_TO:
        skipped = (f"similarity index not built: {count:,} samples is more than the {SIMILARITY_INDEX_UP_TO:,} whose "
                   "vectors FiftyOne Brain's in-memory backend can hold; to sort by similarity in the App, build one in "
                   "a vector database (Qdrant, Milvus, LanceDB) a page at a time: docs/scale.md#the-similarity-index")
    db.save_audit_info(root, similarity_index=skipped or "built")
    quiet = logging.getLogger("fiftyone.brain")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        if skipped is None:
            fob.compute_similarity(view, embeddings=names.EMBEDDINGS, backend="sklearn", metric="cosine",
                                   brain_key=names.SIMILARITY_KEY, progress=False)
        fob.compute_visualization(view, brain_key=names.VISUALIZATION_KEY, progress=False, **mapped)
    finally:
        quiet.level = level
    return skipped


def _fitted_signals(stored: Signals, fitted: list[FittedHeads], row: int,
                    label: str | None) -> tuple[Signals, object]:
    """The sample's signals with the whole-image figures of the fitted heads (the mean over the
    models' out-of-fold probabilities), the model's own top classes kept as ``model_top`` and the
    first phase's Eigen-CAM figures; and its prediction. No second opinions: with a fitted head,
    views of the image (mirror, crops) rank the label errors no better than the whole image
    (docs/how-it-works.md#second-opinions), so no image is read again."""
    classes = fitted[0].classes
    probabilities = torch.from_numpy(np.mean([f.probabilities[row] for f in fitted], axis=0))
    given_index = classes.index(label) if label in classes else None
    whole = distribution_signals(probabilities, given_index, classes)
    signals = replace(whole_image_signals(whole, label, given_index, classes),
                      cam_variance_ratio=stored.cam_variance_ratio, visible_fraction=stored.visible_fraction,
                      cam_box_area=stored.cam_box_area, neighbours=stored.neighbours,
                      model_top=_model_top(stored), head=FIT,
                      classes=len(classes), class_seen=int(fitted[0].class_seen[row]),
                      class_examples=_examples(fitted[0], label))
    prediction = db.fo.Classification(label=whole.top_label, confidence=whole.top_prob)
    return signals, prediction


def _examples(fitted: FittedHeads, label: str | None) -> int:
    """How many samples carry ``label`` (0 for none)."""
    return fitted.class_counts.get(label, 0) if label is not None else 0
