"""Your own predictions and your own classifier on real human label noise (../shared/data/cifar10n-dev).

5,000 CIFAR-10 training photos with Mechanical Turk labels (two label sets: the workers' majority,
``aggre``, 428 wrong; a wrong worker label wherever one exists, ``worst``, 2,012 wrong), the
out-of-fold probabilities of five real models for each, and a user's fine-tuned EfficientNet-Lite0
(../shared/data/models/cifar10-lite0). Each label set is scanned once as a user would
(`audit scan csv --root labels.csv --predictions FILE.csv`); each model's predictions are then
attached in turn (the first phase is kept, the second phase and the scoring rerun). The user's own
classifier is scanned on its own (`--model timm:tf_efficientnet_lite0 --weights model.pth --classes
classes.txt`), its head judging, and then with each model's predictions too (both at once: the
user's classifier explains, the predictions judge, its own probabilities weighed in). Figures, against the truth files:

- AP and AUROC of ``mislabel_score``, beside cleanlab's self-confidence (1 - p[label]) and
  normalised margin (p[label] - max p[other]) on the same probabilities, computed here;
- triage: among the samples whose predicted class is not the label, the AUROC of ``mislabel_score``
  for "the label is wrong" against "the label is right and the model is wrong", beside 1 - p[label];
- how often ``suggested_label`` is the true class among the wrong labels, beside the probabilities'
  best other class.

    .venv/bin/python benchmarks/own_model.py                       # everything (about an hour on 2 cores)
    .venv/bin/python benchmarks/own_model.py --models resnet18 --no-user-model
    .venv/bin/python benchmarks/own_model.py --data DIR --user-model DIR   # a held-out set of the same layout

The database is FIFTYONE_DATABASE_URI's when set (scans are then kept between runs), else a
throwaway mongod in a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "cifar10n-dev"
USER_MODEL = REPO.parent / "shared" / "data" / "models" / "cifar10-lite0"
LABEL_SETS = {"aggre": ("labels.csv", "truth_aggre.csv"), "worst": ("labels_worst.csv", "truth_worst.csv")}
MODELS = ("resnet18", "efficientnet_b1", "resnet50d", "swin_base_patch4_window7_224", "twins_pcpvt_base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--label-sets", nargs="+", default=list(LABEL_SETS), choices=list(LABEL_SETS))
    parser.add_argument("--no-user-model", action="store_true", help="leave the user's classifier out")
    parser.add_argument("--limit", type=int, help="the first N photos only (a quick look, not the figures)")
    parser.add_argument("--data", type=Path, default=DATA, help="a folder laid out as cifar10n-dev (its README)")
    parser.add_argument("--user-model", type=Path, default=USER_MODEL,
                        help="a folder with the user's model.pth and classes.txt")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from throwaway_db import benchmark_database

    benchmark_database("audit-own-model-")
    sys.path.insert(0, str(REPO))
    from rich.console import Console
    from rich.table import Table

    out = Console(width=200)
    rows = []
    for label_set in args.label_sets:
        labels_file, truth_file = LABEL_SETS[label_set]
        truth = read_truth(args.data / truth_file)
        scan = LabelSet(args.data, labels_file, label_set, args.limit)
        for model in args.models:
            rows.append(run_given(scan, model, truth))
            out.print(row_text(rows[-1]))
        if not args.no_user_model:
            rows.append(run_user_model(scan, args.user_model, truth))
            out.print(row_text(rows[-1]))
            for model in args.models:
                rows.append(run_both(scan, args.user_model, model, truth))
                out.print(row_text(rows[-1]))
    table = Table("labels", "judged by", "AP", "AUROC", "SC AP", "NM AP", "AP / best", "triage AUROC",
                  "1-p triage", "suggested", "best other", title=f"{args.data.name}: wrong labels ranked first")
    for row in rows:
        table.add_row(row["labels"], row["by"], f"{row['ap']:.3f}", f"{row['auroc']:.3f}", f"{row['sc_ap']:.3f}",
                      f"{row['nm_ap']:.3f}", f"{row['ap'] / max(row['sc_ap'], row['nm_ap']):.3f}",
                      f"{row['triage']:.3f}", f"{row['triage_p']:.3f}", f"{row['suggested']:.0%}",
                      f"{row['best_other']:.0%}")
    out.print(table)


def read_truth(path: Path) -> dict[str, tuple[int, str]]:
    """absolute file -> (1 when its label is wrong, its true class)."""
    with open(path, newline="") as handle:
        return {str((path.parent / row["filepath"]).resolve()): (int(row["label_error"]), row["true_label"])
                for row in csv.DictReader(handle)}


@dataclass(frozen=True)
class LabelSet:
    """One label set of a data folder, scanned as a user would (``audit scan csv --root LABELS``)."""

    data: Path
    labels_file: str
    name: str
    limit: int | None

    def request(self, suffix: str = "", *, model: str | None = None):
        """The CSV source, judged by ``model``'s out-of-fold predictions when one is named."""
        import audit

        predictions = str(self.data / "predictions" / f"{model}_{self.name}.csv") if model else None
        return audit.SourceRequest("csv", root=str(self.data / self.labels_file), limit=self.limit,
                                   name=f"{self.data.name}-{self.name}{suffix}", predictions=predictions)


def run_given(scan: LabelSet, model: str, truth: dict) -> dict:
    """The label set scanned with the embedded model, judged by ``model``'s out-of-fold predictions."""
    import audit

    dataset, _ = audit.load_source(scan.request(model=model), warn=_warn)
    with audit.scan_progress() as progress:
        audit.audit_dataset(dataset, audit.load_models(audit.model_names()), progress=progress)
    return figures(dataset, truth, scan.name, f"{model} (given)")


def run_user_model(scan: LabelSet, user_model: Path, truth: dict) -> dict:
    """The label set scanned with the user's own classifier, its head judging."""
    import audit

    dataset, _ = audit.load_source(scan.request("-own"))
    with audit.scan_progress() as progress:
        audit.audit_dataset(dataset, _user_classifier(user_model), progress=progress)
    return figures(dataset, truth, scan.name, "your Lite0 (its head)")


def run_both(scan: LabelSet, user_model: Path, model: str, truth: dict) -> dict:
    """The user's classifier explaining and ``model``'s out-of-fold predictions judging: the label set
    scanned once so, each model's predictions then attached in turn (the first phase kept)."""
    import audit

    dataset, _ = audit.load_source(scan.request("-both", model=model), warn=_warn)
    with audit.scan_progress() as progress:
        audit.audit_dataset(dataset, _user_classifier(user_model), progress=progress)
    return figures(dataset, truth, scan.name, f"{model} (given) + your Lite0")


def _user_classifier(folder: Path):
    import audit

    return audit.load_models(["timm:tf_efficientnet_lite0"], weights=folder / "model.pth",
                             classes=folder / "classes.txt")


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def figures(dataset, truth: dict, label_set: str, by: str) -> dict:
    """The figures of the module's docstring for one judged dataset; the baselines on the judging
    probabilities: the given ones (``given_probabilities``), else the model head's (its stored top classes)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from audit import names
    from audit.score.triage import probability_matrix
    from audit.signals import Signals
    from audit.store import db

    filepaths, labels, scores, suggested, stored = dataset.values(
        ["filepath", f"{names.GROUND_TRUTH}.label", names.SCORE, names.SUGGESTED, names.SIGNALS])
    predictions = db.audit_info(dataset).get("predictions")
    if db.audit_info(dataset)["head"]["kind"] == "given":
        classes = predictions["classes"]
        probabilities = np.array(dataset.values(names.GIVEN_PROBABILITIES), dtype=np.float64)
        label_index = np.array([classes.index(label) for label in labels])
    else:  # your classifier's head: all its classes are stored, named as the labels
        probabilities, label_index, classes = probability_matrix([Signals.read(s) for s in stored])
    rows = np.arange(len(labels))
    given = probabilities[rows, label_index]
    others = probabilities.copy()
    others[rows, label_index] = -1.0
    wrong = np.array([truth[path][0] for path in filepaths])
    score = np.array([s if s is not None else 0.0 for s in scores])
    disputed = probabilities.argmax(axis=1) != label_index
    errors = np.flatnonzero(wrong == 1)
    return {"labels": label_set, "by": by, "ap": average_precision_score(wrong, score),
            "auroc": roc_auc_score(wrong, score), "sc_ap": average_precision_score(wrong, 1 - given),
            "nm_ap": average_precision_score(wrong, others.max(axis=1) - given),
            "triage": roc_auc_score(wrong[disputed], score[disputed]),
            "triage_p": roc_auc_score(wrong[disputed], 1 - given[disputed]),
            "suggested": np.mean([suggested[i] == truth[filepaths[i]][1] for i in errors]),
            "best_other": np.mean([classes[int(others[i].argmax())] == truth[filepaths[i]][1] for i in errors])}


def row_text(row: dict) -> str:
    return (f"{row['labels']} {row['by']}: AP {row['ap']:.3f} (self-confidence {row['sc_ap']:.3f}, normalised margin "
            f"{row['nm_ap']:.3f}), AUROC {row['auroc']:.3f}; triage AUROC {row['triage']:.3f} (1-p {row['triage_p']:.3f}); "
            f"suggested = true class {row['suggested']:.0%} (best other class {row['best_other']:.0%})")


if __name__ == "__main__":
    main()
