"""Apply the scoring to a dataset in bulk, and read the ranked rows that rank/export show."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from audit import db, names
from audit.data.classes import resolve_imagenet_label
from audit.score import THRESHOLDS, for_new_label, judge


@dataclass
class ScoringSummary:
    """Counts per category, and how often the model's top-1 equals the given label (top-1
    accuracy if the labels are right) over the samples whose label is one of the model's classes."""

    counts: dict[str, int]
    top1_agreement: float | None
    labelled: int


def rescore(dataset, sample_ids: list[str] | None = None) -> ScoringSummary:
    """Judge every scanned sample (or those of ``sample_ids``) from its stored signals, write
    category, mislabel_score, reasons and suggested_label in bulk, and re-sync tags and saved views.
    A sample relabelled since its scan is judged for its new label (`audit.score.for_new_label`)."""
    view = dataset.exists(names.SIGNALS)
    if sample_ids is not None:
        view = view.select(sample_ids)
    ids, signals, labels = view.values(["id", names.SIGNALS, f"{db.label_field(dataset)}.label"])
    signals = [_for_current_label(s, label) for s, label in zip(signals, labels)]
    verdicts = [judge(s) for s in signals]
    for field, values in ((names.CATEGORY, [v.category for v in verdicts]),
                          (names.SCORE, [v.mislabel_score for v in verdicts]),
                          (names.REASONS, [v.reasons for v in verdicts]),
                          (names.SUGGESTED, [v.suggested_label for v in verdicts])):
        view.set_values(field, dict(zip(ids, values)), key_field="id")
    db.sync_flags(dataset._root_dataset)
    db.save_audit_info(dataset._root_dataset, thresholds=THRESHOLDS)
    counts = Counter(verdict.category for verdict in verdicts)
    labelled = [s for s in signals if s.get("given_index") is not None]
    agreement = sum(s["pred_index"] == s["given_index"] for s in labelled) / len(labelled) if labelled else None
    return ScoringSummary(dict(counts), agreement, len(labelled))


def _for_current_label(signals: dict, label: str | None) -> dict:
    """The signals as stored, or for the sample's new label when it was relabelled since its scan."""
    if signals.get("error") or signals.get("given_label") == label:
        return signals
    old_index, old_label = signals.get("given_index"), signals.get("given_label")
    imagenet = old_index is not None and resolve_imagenet_label(old_label) == old_index
    return for_new_label(signals, label, resolve_imagenet_label(label) if imagenet else None)


ROW_FIELDS = ("id", "filepath", "given_label", "predicted_label", "predicted_confidence", "suggested_label",
              names.CATEGORY, names.SCORE, names.REASONS)


def ranked_rows(dataset, category: str | None = None, top: int | None = None, everything: bool = False) -> list[dict]:
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
