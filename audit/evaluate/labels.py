"""``audit eval-labels``: how well ``mislabel_score`` ranks verified label errors first, beside the
probability-only baselines computed from the same scan, and how the triage categories split the
verified candidates into label errors and classifier failures."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from audit import names
from audit.errors import AuditError
from audit.score import CONFIDENT, judge, normalised_margin_score

PRECISION_AT = (10, 25, 50)


class TruthError(AuditError):
    """The truth file cannot be used; one line."""


def read_truth(path: Path) -> dict[str, str]:
    """ImageId (file stem) -> verdict, from a file like verified_labels.csv. ``label_ok`` means the
    given label is right; any other verdict is a label error. Images not listed count as fine."""
    path = Path(path)
    if not path.is_file():
        raise TruthError(f"truth file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"ImageId", "verdict"} <= set(reader.fieldnames or []):
            raise TruthError(f"{path}: expected the columns ImageId and verdict (as in verified_labels.csv)")
        return {row["ImageId"].strip(): row["verdict"].strip() for row in reader}


def self_confidence(signals: dict) -> float:
    """Baseline: 1 - p(given); higher = more suspect (cleanlab's self_confidence, inverted)."""
    return 1.0 - signals["given_prob"]


def normalized_margin(signals: dict) -> float:
    """Baseline: (1 - (p(given) - max p(other))) / 2 of the whole image; higher = more suspect
    (cleanlab's normalized_margin, inverted)."""
    return normalised_margin_score(signals)


BASELINES = {"self_confidence": self_confidence, "normalized_margin": normalized_margin}


def ranking_figures(is_error: np.ndarray, scores: np.ndarray) -> dict:
    """AUROC, average precision and precision at 10/25/50 of ``scores`` (higher = more suspect)."""
    order = np.argsort(-scores, kind="stable")
    figures = {"auroc": float(roc_auc_score(is_error, scores)),
               "average_precision": float(average_precision_score(is_error, scores)),
               "precision_at": {str(k): float(is_error[order[:k]].mean()) for k in PRECISION_AT if k <= len(scores)}}
    return figures


def evaluate_labels(dataset, truth_path: Path) -> dict:
    """Figures for mislabel_score and each baseline over the scanned samples whose label the model
    knows (for an ensemble: the baselines of the ensemble's mean probabilities, and in
    ``per_model`` those of each model alone), the ablation without second opinions, the triage
    table of the verified candidates (category x verdict) and how well the category separates
    label errors from classifier failures among the misclassified candidates (``separation``)."""
    truth = read_truth(truth_path)
    view = dataset.exists(names.SIGNALS).exists(names.SCORE)
    filepaths, signals, scores, categories = view.values(["filepath", names.SIGNALS, names.SCORE, names.CATEGORY])
    if not filepaths:
        raise TruthError(f"dataset '{dataset.name}' has no scored samples; run `audit scan` first")
    stems = [Path(p).stem for p in filepaths]
    matched = sum(stem in truth for stem in stems)
    if matched == 0:
        raise TruthError(f"no sample of '{dataset.name}' is named in {truth_path} (matched by file name)")
    is_error = np.array([truth.get(stem, "label_ok") != "label_ok" for stem in stems])
    report = {"n": len(stems), "n_errors": int(is_error.sum()), "n_candidates": matched,
              **ranking_figures(is_error, np.array(scores, dtype=float))}
    report["baselines"] = {name: ranking_figures(is_error, np.array([f(s) for s in signals]))
                           for name, f in BASELINES.items()}
    members = signals[0].get("models", {})
    if members:
        report["per_model"] = {model: {name: ranking_figures(is_error, np.array([f(s["models"][model]) for s in signals]))
                                       for name, f in BASELINES.items()} for model in members}
    # The ablation: the same scoring without the explanation-guided second opinions.
    without_views = np.array([judge(s, use_views=False).mislabel_score for s in signals])
    report["ablation"] = {"mislabel_score without views": ranking_figures(is_error, without_views)}
    triage = Counter((categories[i], truth[stem]) for i, stem in enumerate(stems) if stem in truth)
    report["triage"] = {f"{category} / {verdict}": count for (category, verdict), count in sorted(triage.items())}
    report["separation"] = separation(stems, signals, categories, truth)
    report["model_agrees"] = model_agreed_errors(is_error, signals)
    return report


def model_agreed_errors(is_error: np.ndarray, signals: list[dict]) -> dict:
    """The label errors whose given label is the model's own top-1 (``errors``): a ranking built on
    this model's probabilities cannot lift them above the many samples it disputes.
    ``auroc_disputed_first``: the AUROC if every other label error came first and these stayed where
    the normalised margin puts them, what such a ranking can be expected to reach at best."""
    agreed = np.array([s["pred_index"] == s["given_index"] for s in signals]) & is_error
    margin = np.array([normalized_margin(s) for s in signals])
    disputed_first = np.where(is_error & ~agreed, 2.0, margin)
    return {"errors": int(agreed.sum()), "auroc_disputed_first": float(roc_auc_score(is_error, disputed_first))}


def separation(stems: list[str], signals: list[dict], categories: list[str], truth: dict[str, str]) -> dict:
    """Among the verified candidates the model misclassifies (top-1 is not the given label): how
    well "label error" is told from "the label is fine, the classifier failed", as balanced
    accuracy (0.5 = chance, 1 = perfect), by the category (``suspected_mislabel`` = label error)
    and by a confidence threshold on the prediction (at score.CONFIDENT, and at the threshold
    that is best in hindsight on these very samples, an upper bound for any threshold)."""
    rows = [(truth[stem] != "label_ok", categories[i] == names.SUSPECTED_MISLABEL, signals[i]["pred_prob"])
            for i, stem in enumerate(stems) if stem in truth and signals[i]["pred_index"] != signals[i]["given_index"]]
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
