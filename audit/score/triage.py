"""Apply the scoring to a dataset in bulk, and read the ranked rows that rank/export show."""

from __future__ import annotations

import sys
from array import array
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from audit import names
from audit.data.classes import imagenet_names, resolve_imagenet_label
from audit.heads.choice import FIT, GIVEN, MODEL_LABEL_SET_SOURCES, head_kind
from audit.score.estimate import QUEUE_FROM, LabelErrors, estimate_label_errors
from audit.score.policy import THRESHOLDS, Verdict, for_new_label, judge, sized
from audit.signals import Signals
from audit.store import db

WRITE_PAGE = 10_000  # samples whose verdicts are written in one bulk


@dataclass
class ScoringSummary:
    """Counts per category, and how often the model's top-1 equals the given label (top-1
    accuracy if the labels are right) over the samples whose label is one of the model's classes."""

    counts: dict[str, int]
    top1_agreement: float | None
    labelled: int
    label_errors: LabelErrors | None = None


def rescore(dataset, *, sample_ids: list[str] | None = None) -> ScoringSummary:
    """Judge every scanned sample (or those of ``sample_ids``) from its stored signals, estimate how
    many labels are wrong (`audit.score.estimate`; a partial rescore keeps the dataset's estimate),
    calibrate mislabel_score to it and size the review queue by it (`audit.score.policy.sized`); write
    category, mislabel_score, reasons, why and suggested_label in bulk, the estimate to
    ``dataset.info["audit"]["label_errors"]``, and re-sync tags and saved views.
    A sample relabelled since its scan is judged for its new label (`audit.score.policy.for_new_label`)."""
    root = dataset._root_dataset
    view = dataset.exists(names.SIGNALS)
    if sample_ids is not None:
        view = view.select(sample_ids)
    ids, signals, verdicts = _judged_samples(view, db.label_field(dataset), label_set(root))
    if sample_ids is None:
        errors, chances = _estimate(signals, verdicts)
    else:
        errors = LabelErrors.read(db.audit_info(root).get("label_errors"))
        chances = _chances(verdicts, errors)
    verdicts = [verdict if chance is None else sized(verdict, s, chance=chance, queued=chance >= QUEUE_FROM)
                for verdict, s, chance in zip(verdicts, signals, chances)]
    for start in range(0, len(ids), WRITE_PAGE):
        db.write_samples(root, {sample_id: {names.CATEGORY: v.category, names.SCORE: _shown(v.mislabel_score),
                                            names.REASONS: v.reasons, names.WHY: v.why, names.SUGGESTED: v.suggested_label}
                                for sample_id, v in zip(ids[start:start + WRITE_PAGE], verdicts[start:start + WRITE_PAGE])})
    if errors is not None:  # the queue as the categories hold it (the explanation keeps two objects out of it)
        errors = replace(errors, queue=len(root.match(db.F(names.CATEGORY) == names.SUSPECTED_MISLABEL)))
        db.save_audit_info(root, label_errors=errors.stored())
    db.sync_flags(root)
    db.save_audit_info(root, thresholds={**THRESHOLDS, "queue_from": QUEUE_FROM})
    counts = Counter(verdict.category for verdict in verdicts)
    labelled = [s for s in signals if s.given_index is not None]
    agreement = sum(s.pred_index == s.given_index for s in labelled) / len(labelled) if labelled else None
    return ScoringSummary(dict(counts), agreement, len(labelled), errors)


def highest_scored(dataset, count: int) -> list[str]:
    """The ids of the ``count`` scanned samples with the highest mislabel_score, judged from their
    stored signals without writing anything: the order `rescore` gives (its calibration keeps the
    raw score's order), at a fraction of its cost."""
    ids, _, verdicts = _judged_samples(dataset.exists(names.SIGNALS), db.label_field(dataset),
                                       label_set(dataset._root_dataset))
    scores = np.array([np.nan if verdict.mislabel_score is None else verdict.mislabel_score for verdict in verdicts])
    scored = np.flatnonzero(~np.isnan(scores))
    order = scored[np.argsort(-scores[scored], kind="stable")][:count]
    return [ids[row] for row in order]


def _judged_samples(view, label_field: str, classes: frozenset[str] | None) -> tuple[list[str], list[Brief], list[Verdict]]:
    """The ids of ``view``'s samples, what the scoring reads of their signals once they are judged
    (`Brief`) and their verdicts (`audit.score.policy.judge`), each for its current label
    (`_for_current_label`); the signals read straight from the database (`audit.store.db.stored_documents`)."""
    ids, briefs, verdicts = [], [], []
    for document in db.stored_documents(view, [names.SIGNALS, f"{label_field}.label"]):
        stored = document.get(names.SIGNALS)
        signals = _for_current_label(Signals.read(stored), stored, (document.get(label_field) or {}).get("label"))
        ids.append(str(document["_id"]))
        briefs.append(Brief.of(signals))
        verdicts.append(judge(signals, label_set=classes))
    return ids, briefs, verdicts


@dataclass(frozen=True, slots=True)
class Brief:
    """What the scoring reads of a sample's signals once it is judged: the whole image's figures and
    the label's, which `_estimate`, `probability_matrix` and `audit.score.policy.sized` read as they
    read `Signals`. A million samples' whole signals take 7.5 GB."""

    pred_index: int | None
    pred_label: str | None
    pred_prob: float | None
    top_classes: tuple | None
    top_probabilities: array | None  # float64, in the order of top_classes
    given_label: str | None
    given_index: int | None
    given_class: str | None
    given_prob: float | None
    given_rank: int | None
    head: str | None

    @classmethod
    def of(cls, signals: Signals) -> Brief:
        top = signals.top
        classes = None if top is None else tuple(_shared(label) for label, _ in top)
        probabilities = None if top is None else array("d", (probability for _, probability in top))
        return cls(signals.pred_index, _shared(signals.pred_label), signals.pred_prob, classes, probabilities,
                   _shared(signals.given_label), signals.given_index, _shared(signals.given_class), signals.given_prob,
                   signals.given_rank, _shared(signals.head))

    @property
    def top(self) -> list | None:
        """(class, probability) pairs, as `Signals.top`."""
        return None if self.top_classes is None else list(zip(self.top_classes, self.top_probabilities))


def _shared(text: str | None) -> str | None:
    """One copy of each class name for all the samples (each stored document holds its own)."""
    return None if text is None else sys.intern(text)


def _judged(signals: Brief, verdict: Verdict) -> bool:
    """A labelled sample the head scored: what the estimate counts."""
    return verdict.mislabel_score is not None and signals.given_rank is not None and signals.pred_prob is not None


def _estimate(signals: list[Brief], verdicts: list[Verdict]) -> tuple[LabelErrors, list[float | None]]:
    """The estimate over the judged samples, and each scored sample's chance that its label is wrong
    (a scored sample the estimate cannot count, its score through the calibration; None unscored)."""
    rows = [row for row, (s, v) in enumerate(zip(signals, verdicts)) if _judged(s, v)]
    judged = [signals[r] for r in rows]
    noise_matrix = {}  # a fitted head's probabilities: the noise-matrix method (see audit.score.estimate)
    if judged and all(s.head == FIT for s in judged):
        probabilities, columns, _ = probability_matrix(judged)
        noise_matrix = {"probabilities": probabilities, "labels": columns}
    errors, _ = estimate_label_errors(
        confidence=np.array([s.pred_prob for s in judged], dtype=float),
        agrees=np.array([s.given_rank == 1 for s in judged]),
        raw_scores=np.array([verdicts[r].mislabel_score for r in rows], dtype=float),
        given=[s.given_label for s in judged], top=[s.pred_label for s in judged],
        **noise_matrix)
    return errors, _chances(verdicts, errors)


def probability_matrix(signals: list[Signals | Brief]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The judging head's probabilities of ``signals`` (N x K over the classes their stored top classes
    and labels name; a class outside a sample's stored top counts 0 there; rows summing to 1), each
    label's column (the label as the head names it) and the K classes: what the noise-matrix method
    reads, and the benchmarks' baselines."""
    given = [s.given_class or s.given_label for s in signals]
    classes = sorted({label for s in signals for label, _ in s.top or []} | set(given))
    column = {label: index for index, label in enumerate(classes)}
    probabilities = np.zeros((len(signals), len(classes)))
    for row, s in enumerate(signals):
        for label, probability in s.top or []:
            probabilities[row, column[label]] = probability
        if s.given_prob is not None:
            probabilities[row, column[given[row]]] = s.given_prob
    probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    return probabilities, np.array([column[label] for label in given]), classes


def _chances(verdicts: list[Verdict], errors: LabelErrors | None) -> list[float | None]:
    """Each sample's chance that its label is wrong: its raw score through the dataset's calibration
    (None where it has no score, or the dataset no calibration)."""
    if errors is None or errors.calibration is None:
        return [None] * len(verdicts)
    scores = np.array([np.nan if v.mislabel_score is None else v.mislabel_score for v in verdicts], dtype=float)
    calibrated = errors.calibration.apply(scores)
    return [None if np.isnan(score) else float(chance) for score, chance in zip(scores, calibrated)]


def _shown(score: float | None) -> float | None:
    """The score as stored: ten decimals (the calibrated scores of the clear labels are near 0 and
    differ only in the last ones, which keep the ranking)."""
    return None if score is None else round(score, 10)


# Sources labelled in the model's own classes (ImageNet's 1000): a suggestion may name any of them.
def label_set(dataset) -> frozenset[str] | None:
    """The classes a suggested label may name, as the head names them: None (any of the model's)
    for the ImageNet sources; else the classes the dataset declares for its label field
    (``dataset.classes`` or ``default_classes``), or failing that the labels it uses (as they are
    with a fitted head, as the model names them with its own)."""
    info = db.audit_info(dataset)
    if info.get("source") in MODEL_LABEL_SET_SOURCES:
        return None
    field = db.label_field(dataset)
    declared = dataset.classes.get(field) or dataset.default_classes
    used = declared or (dataset.distinct(f"{field}.label") if dataset.has_sample_field(field) else [])
    fitted = head_kind(dataset) in (FIT, GIVEN)  # the labels as the dataset names them
    return frozenset(label if fitted else _model_name(label) for label in used if label)


def _model_name(label: str) -> str:
    index = resolve_imagenet_label(label)
    return label if index is None else imagenet_names()[index]


def _for_current_label(signals: Signals, stored: dict, label: str | None) -> Signals:
    """The signals as stored, or for the sample's new label when it was relabelled since its scan."""
    if signals.error or signals.given_label == label:
        return signals
    old_index, old_label = signals.given_index, signals.given_label
    imagenet = signals.head not in (FIT, GIVEN) and old_index is not None and resolve_imagenet_label(old_label) == old_index
    return Signals.read(for_new_label(stored, label, resolve_imagenet_label(label) if imagenet else None))


ROW_FIELDS = ("id", "filepath", "given_label", "predicted_label", "predicted_confidence", "suggested_label",
              names.CATEGORY, names.SCORE, names.REASONS)


def ranked_rows(dataset, *, category: str | None = None, top: int | None = None, everything: bool = False) -> list[dict]:
    """Scanned samples as plain rows, highest mislabel_score first: flagged ones only unless
    ``everything``; one category with ``category``; the first ``top``."""
    if everything:
        view = db.scanned_view(dataset)
        if category:
            view = view.match(db.F(names.CATEGORY) == category)
    else:
        view = db.flagged_view(dataset, category)
    if top:
        view = view.limit(top)
    label = db.label_field(dataset)
    columns = view.values(["id", "filepath", f"{label}.label", f"{names.PREDICTIONS}.label",
                           f"{names.PREDICTIONS}.confidence", names.SUGGESTED, names.CATEGORY, names.SCORE, names.REASONS])
    return [dict(zip(ROW_FIELDS, values)) for values in zip(*columns)]
