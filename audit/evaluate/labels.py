"""``audit eval-labels``: how well ``mislabel_score`` ranks verified label errors first, beside the
probability-only baselines computed from the same scan, and how the triage categories split the
verified candidates into label errors and classifier failures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from audit import names
from audit.data.classes import resolve_imagenet_label
from audit.evaluate.truth import Truth, TruthError, read_truth
from audit.score.policy import CONFIDENT, judge, normalised_margin_score
from audit.signals import Distribution, Signals

PRECISION_AT = (10, 25, 50)


def self_confidence(distribution: Distribution) -> float:
    """Baseline: 1 - p(given); higher = more suspect (cleanlab's self_confidence, inverted)."""
    return 1.0 - distribution.given_prob


def normalized_margin(distribution: Distribution) -> float:
    """Baseline: (1 - (p(given) - max p(other))) / 2 of the whole image; higher = more suspect
    (cleanlab's normalized_margin, inverted)."""
    return normalised_margin_score(distribution)


BASELINES = {"self_confidence": self_confidence, "normalized_margin": normalized_margin}


def ranking_figures(is_error: np.ndarray, scores: np.ndarray) -> dict:
    """AUROC, average precision and precision at 10/25/50 of ``scores`` (higher = more suspect)."""
    order = np.argsort(-scores, kind="stable")
    figures = {"auroc": float(roc_auc_score(is_error, scores)),
               "average_precision": float(average_precision_score(is_error, scores)),
               "precision_at": {str(k): float(is_error[order[:k]].mean()) for k in PRECISION_AT if k <= len(scores)}}
    return figures


def evaluate_labels(dataset, truth_path: Path) -> dict:
    """Figures for mislabel_score and each baseline over the scanned samples the truth judges whose
    label the model knows (for an ensemble: the baselines of the ensemble's mean probabilities, and
    in ``per_model`` those of each model alone), the ablation without second opinions, the triage
    table of the verified candidates (category x verdict), how well the category separates label
    errors from classifier failures among the misclassified candidates (``separation``), how often
    the suggestion is the humans' label (``suggestions``) and, where the truth names multi-label
    images, how well ``ambiguous`` finds them (``ambiguous``)."""
    truth = read_truth(truth_path)
    view = dataset.exists(names.SIGNALS).exists(names.SCORE)
    columns = view.values(["filepath", names.SIGNALS, names.SCORE, names.CATEGORY, names.SUGGESTED])
    if not columns[0]:
        raise TruthError(f"dataset '{dataset.name}' has no scored samples; run `audit scan` first")
    judged = [row for row in zip(*columns) if truth.judges(Path(row[0]).stem)]
    if not any(Path(row[0]).stem in truth.verdicts for row in judged):
        raise TruthError(f"no sample of '{dataset.name}' is named in {truth_path} (matched by file name)")
    filepaths, stored, scores, categories, suggested = (list(c) for c in zip(*judged))
    signals = [Signals.read(s) for s in stored]
    stems = [Path(p).stem for p in filepaths]
    is_error = np.array([truth.is_error(stem) for stem in stems])
    report = {"n": len(stems), "n_errors": int(is_error.sum()), "n_candidates": sum(s in truth.verdicts for s in stems),
              **ranking_figures(is_error, np.array(scores, dtype=float))}
    report["baselines"] = {name: ranking_figures(is_error, np.array([f(s.whole_image()) for s in signals]))
                           for name, f in BASELINES.items()}
    members = signals[0].models or {}
    if members:
        report["per_model"] = {model: {name: ranking_figures(is_error, np.array([f(s.models[model]) for s in signals]))
                                       for name, f in BASELINES.items()} for model in members}
    # The ablation: the same scoring without the explanation-guided second opinions.
    without_views = np.array([judge(s, use_views=False).mislabel_score for s in signals])
    report["ablation"] = {"mislabel_score without views": ranking_figures(is_error, without_views)}
    triage = Counter((categories[i], truth.verdicts[stem]) for i, stem in enumerate(stems) if stem in truth.verdicts)
    report["triage"] = {f"{category} / {verdict}": count for (category, verdict), count in sorted(triage.items())}
    report["queue"] = queue_figures(is_error, np.array(scores, dtype=float), categories)
    report["separation"] = separation(stems, signals, categories, truth)
    report["model_agrees"] = model_agreed_errors(is_error, signals)
    report["suggestions"] = suggestion_figures(stems, signals, suggested, truth)
    if truth.multi_label is not None:
        report["ambiguous"] = ambiguous_figures(stems, signals, categories, truth)
    return report


def queue_figures(is_error: np.ndarray, scores: np.ndarray, categories: list[str]) -> dict:
    """The estimate of wrong labels among the judged samples (the sum of their calibrated
    mislabel_score) beside the truth's count, and the review queue's (``suspected_mislabel``)
    precision, recall and F1 beside the best F1 any cut of the ranking reaches in hindsight."""
    queued = np.array([category == names.SUSPECTED_MISLABEL for category in categories], dtype=bool)
    return {"estimate": float(scores.sum()), "errors": int(is_error.sum()), "queue": int(queued.sum()),
            **precision_recall(is_error, queued), "best_f1": best_f1(is_error, scores)}


def best_f1(is_error: np.ndarray, scores: np.ndarray) -> float:
    """The best F1 any cut of the ranking by ``scores`` reaches (its first k samples called errors),
    k chosen in hindsight."""
    if not len(scores):
        return 0.0
    found = np.cumsum(is_error[np.argsort(-scores, kind="stable")])
    return float((2 * found / (np.arange(1, len(scores) + 1) + is_error.sum())).max())


def suggestion_figures(stems: list[str], signals: list[Signals], suggested: list[str | None], truth: Truth) -> dict:
    """Among the label errors whose fix the humans named: how many get a ``suggested_label`` at all
    (``offered``), how many get the humans' label (``suggested_label``; one of theirs where they gave
    several), and how many the model's top-1 would get right (``model_top1``, the baseline)."""
    rows = [(suggested[i], signals[i].pred_label, truth.human_labels[stem])
            for i, stem in enumerate(stems) if truth.is_error(stem) and stem in truth.human_labels]
    return {"n": len(rows), "offered": sum(s is not None for s, _, _ in rows),
            "suggested_label": sum(_same_class(s, humans) for s, _, humans in rows),
            "model_top1": sum(_same_class(top, humans) for _, top, humans in rows)}


def _same_class(label: str | None, humans: set[str]) -> bool:
    if label is None:
        return False
    index = resolve_imagenet_label(label)
    return label in humans or (index is not None and index in {resolve_imagenet_label(h) for h in humans})


def top1_margin(signals: Signals) -> float:
    """The whole image's top-1 probability minus its runner-up's; lower = a closer call."""
    probs = signals.top_probs or [signals.pred_prob]
    return probs[0] - (probs[1] if len(probs) > 1 else 0.0)


AMBIGUITY_SIGNALS = {
    "second component's share": lambda s: (s.cam_variance_ratio or [0, 0])[1],
    "close call (1 - top-1 margin)": lambda s: 1.0 - top1_margin(s),
}


def ambiguous_figures(stems: list[str], signals: list[Signals], categories: list[str], truth: Truth) -> dict:
    """``ambiguous`` against the images the truth calls multi-label: its precision and recall, those
    of the baseline that flags as many images by the smallest top-1 margin alone, and the AUROC of
    each signal the category rests on (``signals``; 0.5 = chance)."""
    multi = np.array([truth.multi_label.get(stem, False) for stem in stems])
    called = np.array([category == names.AMBIGUOUS for category in categories])
    margin = np.array([top1_margin(s) for s in signals])
    by_margin = np.zeros(len(stems), dtype=bool)
    by_margin[np.argsort(margin, kind="stable")[:int(called.sum())]] = True
    figures = {"n": len(stems), "multi_label": int(multi.sum()), "flagged": int(called.sum()),
               "ambiguous": precision_recall(multi, called), "top-1 margin alone": precision_recall(multi, by_margin)}
    if multi.any() and not multi.all():
        figures["signals"] = {name: float(roc_auc_score(multi, [f(s) for s in signals]))
                              for name, f in AMBIGUITY_SIGNALS.items()}
    return figures


def precision_recall(truth: np.ndarray, called: np.ndarray) -> dict:
    """Precision, recall and F1 of the samples ``called`` against ``truth`` (boolean arrays)."""
    hits = int((truth & called).sum())
    precision = hits / int(called.sum()) if called.any() else 0.0
    recall = hits / int(truth.sum()) if truth.any() else 0.0
    return {"precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def model_agreed_errors(is_error: np.ndarray, signals: list[Signals]) -> dict:
    """The label errors whose given label is the model's own top-1 (``errors``): a ranking built on
    this model's probabilities cannot lift them above the many samples it disputes.
    ``auroc_disputed_first``: the AUROC if every other label error came first and these stayed where
    the normalised margin puts them, what such a ranking can be expected to reach at best."""
    agreed = np.array([s.pred_index == s.given_index for s in signals]) & is_error
    margin = np.array([normalized_margin(s.whole_image()) for s in signals])
    disputed_first = np.where(is_error & ~agreed, 2.0, margin)
    return {"errors": int(agreed.sum()), "auroc_disputed_first": float(roc_auc_score(is_error, disputed_first))}


def separation(stems: list[str], signals: list[Signals], categories: list[str], truth: Truth) -> dict:
    """Among the verified candidates the model misclassifies (top-1 is not the given label): how
    well "label error" is told from "the label is fine, the classifier failed", as balanced
    accuracy (0.5 = chance, 1 = perfect), by the category (``suspected_mislabel`` = label error)
    and by a confidence threshold on the prediction (at score.CONFIDENT, and at the threshold
    that is best in hindsight on these very samples, an upper bound for any threshold)."""
    rows = [(truth.is_error(stem), categories[i] == names.SUSPECTED_MISLABEL, signals[i].pred_prob)
            for i, stem in enumerate(stems) if stem in truth.verdicts and signals[i].pred_index != signals[i].given_index]
    if not rows:
        return {"n": 0}
    errors = np.array([r[0] for r in rows])
    confidence = np.array([r[2] for r in rows])
    thresholds = np.unique(confidence)
    best = max(thresholds, key=lambda t: balanced_accuracy(errors, confidence >= t))
    return {"n": len(rows), "n_errors": int(errors.sum()),
            "category": balanced_accuracy(errors, np.array([r[1] for r in rows])),
            f"confidence >= {CONFIDENT}": balanced_accuracy(errors, confidence >= CONFIDENT),
            f"confidence >= {best:.2f} (best in hindsight)": balanced_accuracy(errors, confidence >= best)}


def balanced_accuracy(truth: np.ndarray, called: np.ndarray) -> float:
    """Mean of the recall of each class (here: label error, label fine); 0.5 = chance."""
    recalls = [float((called[truth == value] == value).mean()) for value in (True, False) if (truth == value).any()]
    return sum(recalls) / len(recalls)
