"""How many labels are wrong, and the review queue sized to it, on every truth the project has.

Each data set is scanned as a user would (`audit scan`); then, against each truth, over the samples
the truth judges:

- the estimate (the sum of the calibrated ``mislabel_score`` over those samples; the whole
  dataset's estimate and range as the scan wrote them) beside the true number of wrong labels;
- precision, recall and F1 of the ``suspected_mislabel`` queue, and the best F1 any cut of the
  ranking reaches in hindsight; the share of the samples in the queue and flagged at all;
- AP and AUROC of ``mislabel_score`` (the ranking; the calibration keeps it);
- beside them, cleanlab's ``num_label_issues`` and ``find_label_issues`` on the same probabilities
  (those of the head that judged: the stored top classes, all of them for ten classes; for
  ImageNet's 1000 classes the ten most probable and the label's, the rest 0), run in cleanlab's
  own environment (--cleanlab-python);
- a reliability table per truth: among the samples scored in each band of ``mislabel_score``, the
  share whose label is wrong.

``--probabilities-only`` measures the estimators on cifar10n-dev's out-of-fold probabilities alone
(five models x two label sets, no scan, a minute): the confirmation method, the noise matrix, the
expected errors (the sum of 1 - p[label]) and cleanlab's count; the queue's F1 beside the best.

    python3 -m venv /tmp/clvenv && /tmp/clvenv/bin/pip install cleanlab==2.9.0
    .venv/bin/python benchmarks/label_errors.py --cleanlab-python /tmp/clvenv/bin/python
    .venv/bin/python benchmarks/label_errors.py --sets cifar10n-aggre-given cifar10n-worst-given

About 45 minutes on 2 cores for every set (most of it the scans of 2 x 5,000 + 3,083 + 2,494 + 361
photos). The database is FIFTYONE_DATABASE_URI's when set (scans are then kept between runs: a
second run only rescores), else a throwaway mongod in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
CIFAR10N = DATA / "cifar10n-dev"
BANDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0001)


@dataclass(frozen=True)
class Set:
    source: str
    root: Path
    truths: tuple[Path, ...]
    predictions: Path | None = None


SETS = {
    "imagenet-val": Set("imagenet-val", DATA / "imagenet-val-dev", (DATA / "imagenet-val-dev" / "verified_labels.csv",
                                                                    DATA / "imagenet-val-dev" / "verified_labels_real.csv")),
    "imagenette": Set("csv", DATA / "imagenette" / "labels.csv", (DATA / "imagenette" / "truth_mturk.csv",
                                                                  DATA / "imagenette" / "truth_real.csv")),
    "cifar10-dev": Set("csv", DATA / "cifar10-dev" / "labels.csv", (DATA / "cifar10-dev" / "truth_mturk.csv",)),
    "cifar10n-aggre": Set("csv", CIFAR10N / "labels.csv", (CIFAR10N / "truth_aggre.csv",)),
    "cifar10n-worst": Set("csv", CIFAR10N / "labels_worst.csv", (CIFAR10N / "truth_worst.csv",)),
    "cifar10n-aggre-given": Set("csv", CIFAR10N / "labels.csv", (CIFAR10N / "truth_aggre.csv",),
                                CIFAR10N / "predictions" / "resnet18_aggre.csv"),
    "cifar10n-worst-given": Set("csv", CIFAR10N / "labels_worst.csv", (CIFAR10N / "truth_worst.csv",),
                                CIFAR10N / "predictions" / "resnet18_worst.csv"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--cleanlab-python", help="a Python with cleanlab installed (its own environment)")
    parser.add_argument("--probabilities-only", action="store_true",
                        help="the estimators on cifar10n-dev's five models' probabilities, no scan")
    args = parser.parse_args()
    if args.probabilities_only:
        sys.path.insert(0, str(REPO))
        probabilities_only(args.cleanlab_python)
        return
    sys.path.insert(0, str(REPO / "tests"))
    from throwaway_db import benchmark_database

    benchmark_database("audit-label-errors-")
    sys.path.insert(0, str(REPO))
    from rich.console import Console
    from rich.table import Table

    out = Console(width=220)
    rows = []
    for name in args.sets:
        dataset = scan(name, SETS[name])
        for truth in SETS[name].truths:
            rows.append(figures(dataset, name, truth, args.cleanlab_python))
            out.print(json.dumps({k: v for k, v in rows[-1].items() if k != "reliability"}))
    table = Table("data set", "truth", "wrong", "estimate (whole set: range)", "cleanlab count", "queue P / R / F1",
                  "best F1", "cleanlab list P / R / F1", "queue / flagged", "AP / AUROC",
                  title="label errors: the estimate and the review queue")
    for row in rows:
        table.add_row(row["set"], row["truth"], str(row["wrong"]),
                      f"{row['estimate']:.0f} ({row['error']:+.0%}); {row['whole']}",
                      _cleanlab_count(row), f"{row['precision']:.2f} / {row['recall']:.2f} / {row['f1']:.3f}",
                      f"{row['best_f1']:.3f}", _cleanlab_list(row),
                      f"{row['queue_share']:.1%} / {row['flagged_share']:.1%}", f"{row['ap']:.3f} / {row['auroc']:.3f}")
    out.print(table)
    reliability = Table("data set", "truth", *[f"{lo:.1f}-{min(hi, 1):.1f}" for lo, hi in zip(BANDS, BANDS[1:])],
                        title="reliability: share of wrong labels (samples) per band of mislabel_score")
    for row in rows:
        reliability.add_row(row["set"], row["truth"], *[f"{share:.2f} ({n})" if n else "-" for share, n in row["reliability"]])
    out.print(reliability)


MODELS = ("resnet18", "efficientnet_b1", "resnet50d", "swin_base_patch4_window7_224", "twins_pcpvt_base")


def probabilities_only(cleanlab_python: str | None) -> None:
    """The estimators on each model's out-of-fold probabilities of cifar10n-dev (the module's docstring)."""
    import csv

    from rich.console import Console
    from rich.table import Table

    from audit.evaluate.labels import best_f1
    from audit.score.estimate import QUEUE_FROM, estimate_label_errors, noise_matrix_chances

    table = Table("labels", "model", "wrong", "confirmation", "noise matrix", "sum 1-p", "cleanlab count",
                  "queue F1 (p >= 0.5)", "F1 of the estimate's count", "best F1",
                  title="cifar10n-dev: estimators on the given probabilities (ranking: 1 - p[label])")
    for label_set, labels_file in (("aggre", "labels.csv"), ("worst", "labels_worst.csv")):
        with open(CIFAR10N / labels_file, newline="") as handle:
            names = [row["label"] for row in csv.DictReader(handle)]
        with open(CIFAR10N / f"truth_{label_set}.csv", newline="") as handle:
            wrong = np.array([int(row["label_error"]) for row in csv.DictReader(handle)], dtype=bool)
        classes = sorted(set(names))
        labels = np.array([classes.index(name) for name in names])
        for model in MODELS:
            probabilities = np.load(CIFAR10N / "predictions" / f"{model}_{label_set}.npy").astype(np.float64)
            rows = np.arange(len(labels))
            raw = 1.0 - probabilities[rows, labels]
            errors, calibrated = estimate_label_errors(
                confidence=probabilities.max(axis=1), agrees=probabilities.argmax(axis=1) == labels, raw_scores=raw,
                given=names, top=[classes[i] for i in probabilities.argmax(axis=1)])
            matrix = noise_matrix_chances(probabilities, labels).sum()
            order = np.argsort(-raw, kind="stable")
            queue_f1 = _f1_of_first(wrong[order], int((calibrated >= QUEUE_FROM).sum()))
            count_f1 = _f1_of_first(wrong[order], errors.estimate)
            cleanlab = _cleanlab_count_only(labels, probabilities, cleanlab_python) if cleanlab_python else None
            total = int(wrong.sum())
            table.add_row(label_set, model, str(total), f"{errors.estimate} ({errors.estimate / total - 1:+.0%})",
                          f"{matrix:.0f} ({matrix / total - 1:+.0%})", f"{raw.sum():.0f} ({raw.sum() / total - 1:+.0%})",
                          "-" if cleanlab is None else f"{cleanlab} ({cleanlab / total - 1:+.0%})",
                          f"{queue_f1:.3f}", f"{count_f1:.3f}", f"{best_f1(wrong, raw):.3f}")
    Console(width=220).print(table)


def _f1_of_first(wrong_in_order: np.ndarray, count: int) -> float:
    hits = int(wrong_in_order[:count].sum())
    return 2 * hits / (count + wrong_in_order.sum()) if count + wrong_in_order.sum() else 0.0


def _cleanlab_count_only(labels: np.ndarray, probabilities: np.ndarray, cleanlab_python: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        given, found = Path(folder) / "in.npz", Path(folder) / "out.npz"
        np.savez(given, labels=labels, pred_probs=probabilities)
        subprocess.run([cleanlab_python, "-c", CLEANLAB_SCRIPT, str(given), str(found)], check=True)
        return int(np.load(found)["count"])


def scan(name: str, spec: Set):
    """The data set scanned (or resumed) as `audit scan` would, with the embedded model."""
    import audit

    request = audit.SourceRequest(spec.source, root=str(spec.root), name=f"label-errors-{name}",
                                  predictions=str(spec.predictions) if spec.predictions else None)
    dataset, _ = audit.load_source(request, warn=lambda line: print(f"warning: {line}", file=sys.stderr))
    with audit.scan_progress() as progress:
        audit.audit_dataset(dataset, audit.load_models(audit.model_names()), progress=progress)
    return dataset


def figures(dataset, name: str, truth_path: Path, cleanlab_python: str | None) -> dict:
    """The module's figures for one scanned set against one truth."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from audit import names
    from audit.evaluate.labels import queue_figures
    from audit.evaluate.truth import read_truth
    from audit.store import db

    truth = read_truth(truth_path)
    scored = dataset.exists(names.SCORE)
    filepaths, scores, categories = scored.values(["filepath", names.SCORE, names.CATEGORY])
    stems = [Path(path).stem for path in filepaths]
    judged = np.array([truth.judges(stem) for stem in stems])
    wrong = np.array([truth.is_error(stem) for stem in stems])[judged]
    score = np.array(scores, dtype=float)[judged]
    categories = [category for category, counted in zip(categories, judged) if counted]
    queue = queue_figures(wrong, score, categories)
    errors = db.audit_info(dataset)["label_errors"]
    row = {"set": name, "truth": truth_path.name, "judged": int(judged.sum()), "wrong": queue["errors"],
           "estimate": queue["estimate"], "error": queue["estimate"] / max(queue["errors"], 1) - 1,
           "whole": f"{errors['estimate']} of {errors['labelled']}: {errors['low']}-{errors['high']}",
           **{key: queue[key] for key in ("precision", "recall", "f1", "best_f1")},
           "queue_share": queue["queue"] / len(score),
           "flagged_share": float(np.mean([c not in (names.OK, names.ERROR_CATEGORY) for c in categories])),
           "ap": float(average_precision_score(wrong, score)), "auroc": float(roc_auc_score(wrong, score)),
           "reliability": [(float(wrong[(score >= lo) & (score < hi)].mean()) if ((score >= lo) & (score < hi)).any() else 0.0,
                            int(((score >= lo) & (score < hi)).sum())) for lo, hi in zip(BANDS, BANDS[1:])]}
    if cleanlab_python:
        row.update(cleanlab_figures(scored, judged, wrong, cleanlab_python))
    return row


def cleanlab_figures(scored, judged: np.ndarray, wrong: np.ndarray, cleanlab_python: str) -> dict:
    """cleanlab's count and list on the judging head's probabilities of every scored sample; the
    count scaled to the judged samples' share, the list's precision, recall and F1 on them."""
    from audit import names
    from audit.evaluate.labels import precision_recall
    from audit.score.triage import probability_matrix
    from audit.signals import Signals

    probabilities, labels, _ = probability_matrix([Signals.read(s) for s in scored.values(names.SIGNALS)])
    with tempfile.TemporaryDirectory() as folder:
        given, found = Path(folder) / "in.npz", Path(folder) / "out.npz"
        np.savez(given, labels=labels, pred_probs=probabilities)
        subprocess.run([cleanlab_python, "-c", CLEANLAB_SCRIPT, str(given), str(found)], check=True)
        result = np.load(found)
        issues = result["issues"][judged]
        count = float(result["count"]) * judged.sum() / len(judged)
    found = precision_recall(wrong, issues)
    return {"cleanlab_count": count, "cleanlab_precision": found["precision"], "cleanlab_recall": found["recall"],
            "cleanlab_f1": found["f1"]}


CLEANLAB_SCRIPT = """
import sys, warnings, numpy as np
warnings.filterwarnings("ignore")  # a warning per class with few examples (ImageNet's 1000 classes)
from cleanlab.count import num_label_issues
from cleanlab.filter import find_label_issues
data = np.load(sys.argv[1])
labels, probabilities = data["labels"], data["pred_probs"]
keep = np.unique(labels)  # classes nobody is labelled with: cleanlab needs every column to be a label
remap = {c: i for i, c in enumerate(keep)}
probabilities = probabilities[:, keep] / probabilities[:, keep].sum(axis=1, keepdims=True)
labels = np.array([remap[c] for c in labels])
np.savez(sys.argv[2], count=num_label_issues(labels, probabilities), issues=find_label_issues(labels, probabilities))
"""


def _cleanlab_count(row: dict) -> str:
    if "cleanlab_count" not in row:
        return "-"
    return f"{row['cleanlab_count']:.0f} ({row['cleanlab_count'] / max(row['wrong'], 1) - 1:+.0%})"


def _cleanlab_list(row: dict) -> str:
    if "cleanlab_f1" not in row:
        return "-"
    return f"{row['cleanlab_precision']:.2f} / {row['cleanlab_recall']:.2f} / {row['cleanlab_f1']:.3f}"


if __name__ == "__main__":
    main()
