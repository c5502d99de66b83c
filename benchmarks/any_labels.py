"""Label errors in a dataset's own label set: mislabel_score beside cleanlab's recipe on the same embeddings.

For ../shared/data/imagenette (ten ImageNet classes, named; two human truths on its 494 validation
images) and ../shared/data/cifar10-dev (ten classes that are not ImageNet's; one truth), the
dataset is scanned as a user would (`audit scan csv --root labels.csv`: auto head) and ranked by:

- ``mislabel_score``: the audit's;
- cleanlab's recipe on the scan's embeddings: 5-fold (stratified, seeded) logistic regression
  out-of-fold probabilities, then cleanlab's normalized margin, self-confidence,
  ``find_label_issues`` and Datalab's label score (run in cleanlab's own environment, see below);
- ``neighbours``: the neighbours' vote alone (share of the 10 nearest carrying another label);
- where the labels are ImageNet classes, the model's own head: the normalized margin over all its
  classes, and over the dataset's classes only (renormalised);

on each real truth (the judged images only), then on synthetic flips of 5 % and 10 % of the labels
(seeded; half to a random other class, half to the class the recipe confuses most with the true
one): the flipped samples are scanned again (their first phase redone, as after a relabel), the
second phase and the scoring run over all. Figures: AP, AUROC, P@10/25/50, and mislabel_score's AP
over the best other ranking's (the target: at least 1.15 on the real truths, at least 1 on the flips).

    python3 -m venv /tmp/clvenv && /tmp/clvenv/bin/pip install "cleanlab[datalab]"
    .venv/bin/python benchmarks/any_labels.py --cleanlab-python /tmp/clvenv/bin/python

The database is FIFTYONE_DATABASE_URI's when set (scans are then kept between runs), else a
throwaway mongod in a temporary folder. Without --cleanlab-python the cleanlab rows are left out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"
SETS = {"imagenette": ("truth_mturk.csv", "truth_real.csv"), "cifar10-dev": ("truth_mturk.csv",)}
FLIPS = (0.05, 0.10)
TARGET_REAL, TARGET_FLIPS = 1.15, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--cleanlab-python", help="a Python with cleanlab installed (its own environment)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flips", action="store_true")
    parser.add_argument("--head", default="auto", choices=("auto", "model", "fit"),
                        help="the scans' head (auto: the model's where the labels are its classes)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from throwaway_db import benchmark_database

    benchmark_database("audit-any-labels-")
    sys.path.insert(0, str(REPO))
    from rich.console import Console

    console = Console()
    for name in args.sets:
        bench = Benchmark(name, args.cleanlab_python, console, head=args.head)
        dataset = bench.scan(DATA / name / "labels.csv", f"bench-{name}" + ("" if args.head == "auto" else f"-{args.head}"))
        for truth in SETS[name]:
            bench.report(dataset, f"{name}, {truth}", bench.truth(dataset, DATA / name / truth), TARGET_REAL)
        if not args.no_flips:
            for level in FLIPS:
                flipped, is_error = bench.flip(dataset, level, args.seed)
                bench.report(flipped, f"{name}, {level:.0%} flipped", is_error, TARGET_FLIPS)


class Benchmark:
    def __init__(self, name: str, cleanlab_python: str | None, console, *, head: str = "auto"):
        self.name, self.cleanlab_python, self.console, self.head = name, cleanlab_python, console, head
        from audit.models.registry import load_model

        self.model = load_model()

    def scan(self, labels_csv: Path, dataset_name: str):
        from audit.pipeline import SourceRequest, load_source

        dataset, _ = load_source(SourceRequest("csv", str(labels_csv), dataset_name), warn=lambda _line: None)
        return self._audit(dataset)

    def _audit(self, dataset):
        from audit.pipeline import audit_dataset, scan_progress
        from audit.scan.options import ScanOptions

        with scan_progress() as progress:
            result = audit_dataset(dataset, [self.model], options=ScanOptions(head=self.head), progress=progress)
        self.console.print(f"{dataset.name}: head {result.scan.head.kind} ({result.scan.head.why}); first phase "
                           f"{result.scan.seconds:.0f} s, second phase {result.scan.second_phase_seconds:.0f} s")
        return dataset

    def columns(self, dataset) -> dict:
        from audit import names
        from audit.store import db

        ids, filepaths, labels, scores, signals, embeddings = dataset.exists(names.EMBEDDINGS).sort_by(
            "_id", create_index=False).values(["id", "filepath", f"{db.label_field(dataset)}.label", names.SCORE,
                                               names.SIGNALS, names.EMBEDDINGS])
        return {"ids": ids, "filepaths": filepaths, "labels": labels, "embeddings": np.stack(embeddings),
                "scores": np.array([-1.0 if s is None else s for s in scores]), "signals": signals}

    def truth(self, dataset, path: Path) -> np.ndarray:
        """Per sample (in `columns` order): 1 a verified error, 0 verified fine, -1 not judged."""
        from audit.evaluate.truth import read_truth

        truth = read_truth(path)
        stems = [Path(f).stem for f in self.columns(dataset)["filepaths"]]
        return np.array([(1 if truth.verdicts.get(s, "label_ok") != "label_ok" else 0) if truth.judges(s) else -1
                         for s in stems])

    def rankings(self, columns: dict) -> dict[str, np.ndarray]:
        """Every ranking of the samples, higher = more suspect."""
        from audit.score.policy import normalised_margin_score
        from audit.signals import Signals

        labels = columns["labels"]
        classes = sorted(set(labels))
        targets = np.array([classes.index(label) for label in labels])
        pred_probs = recipe_probabilities(columns["embeddings"], targets)
        margin = pred_probs[np.arange(len(targets)), targets] - np.where(
            np.eye(len(classes), dtype=bool)[targets], -1.0, pred_probs).max(1)
        ranked = {"mislabel_score": columns["scores"], "recipe: normalized margin": (1 - margin) / 2}
        ranked.update(self.cleanlab(targets, pred_probs, columns["embeddings"]))
        signals = [Signals.read(s) for s in columns["signals"]]
        ranked["neighbours"] = np.array([s.neighbours.other_share if s.neighbours else 0.0 for s in signals])
        if all(s.head == "fit" for s in signals):  # the fitted head's score with self-confidence for its margin
            ranked["fitted head: self-confidence + neighbours"] = np.array([fitted_self_confidence(s) for s in signals])
        if all(s.head != "fit" and s.given_prob is not None for s in signals):
            ranked["model head, all classes"] = np.array([normalised_margin_score(s.whole_image()) for s in signals])
            ranked["model head, the dataset's classes"] = self.restricted_margin(columns, classes)
        self.pred_probs = pred_probs
        return ranked

    def restricted_margin(self, columns: dict, classes: list[str]) -> np.ndarray:
        """The model's own probabilities renormalised over the dataset's classes (the logits from the
        embeddings: the model's classifier is linear on them)."""
        import torch

        from audit.models.registry import model_class_index

        indices = [model_class_index(self.model, label) for label in classes]
        with torch.no_grad():
            logits = self.model.network.get_classifier()(torch.from_numpy(columns["embeddings"]).float())
        probs = torch.softmax(logits[:, indices], dim=1).numpy()
        targets = np.array([classes.index(label) for label in columns["labels"]])
        given = probs[np.arange(len(targets)), targets]
        other = np.where(np.eye(len(classes), dtype=bool)[targets], -1.0, probs).max(1)
        return (1 - (given - other)) / 2

    def cleanlab(self, targets, pred_probs, features) -> dict[str, np.ndarray]:
        if not self.cleanlab_python:
            return {}
        with tempfile.TemporaryDirectory() as folder:
            given, got = Path(folder) / "in.npz", Path(folder) / "out.npz"
            np.savez(given, labels=targets, pred_probs=pred_probs, features=features)
            subprocess.run([self.cleanlab_python, str(HERE / "cleanlab_scores.py"), str(given), str(got)], check=True)
            scores = np.load(got)
            return {f"cleanlab: {key}": scores[key] for key in scores.files}

    def report(self, dataset, title: str, is_error: np.ndarray, target: float) -> None:
        from rich.table import Table

        from audit.evaluate.labels import ranking_figures

        ranked = self.rankings(self.columns(dataset))
        judged = is_error >= 0
        truth = is_error[judged]
        figures = {name: ranking_figures(truth, scores[judged]) for name, scores in ranked.items()}
        best_other = max((f["average_precision"], n) for n, f in figures.items() if n != "mislabel_score")
        ratio = figures["mislabel_score"]["average_precision"] / best_other[0]
        table = Table(title=f"{title}: {int(judged.sum())} judged, {int(truth.sum())} errors; mislabel_score AP / best "
                            f"other ({best_other[1]}) = {ratio:.3f} (target {target:.2f}: "
                            f"{'met' if ratio >= target else 'missed'})")
        for column in ("ranking", "AP", "AUROC", "P@10", "P@25", "P@50"):
            table.add_column(column, justify="left" if column == "ranking" else "right")
        for name, f in figures.items():
            at = f["precision_at"]
            table.add_row(name, f"{f['average_precision']:.3f}", f"{f['auroc']:.3f}",
                          *(f"{at[k]:.2f}" if k in at else "" for k in ("10", "25", "50")))
        self.console.print(table)

    def flip(self, dataset, level: float, seed: int):
        """A clone of ``dataset`` with ``level`` of its labels flipped (half to a random other class,
        half to the class most confused with the true one), the flipped samples' first phase
        redone and everything judged again; and which samples were flipped."""
        from audit import names
        from audit.store import db

        columns = self.columns(dataset)
        labels, classes = columns["labels"], sorted(set(columns["labels"]))
        targets = np.array([classes.index(label) for label in labels])
        pred_probs = recipe_probabilities(columns["embeddings"], targets)
        confusion = np.stack([pred_probs[targets == c].mean(0) for c in range(len(classes))])
        np.fill_diagonal(confusion, -1.0)
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(labels), size=int(round(level * len(labels))), replace=False)
        new_labels = list(labels)
        for position, row in enumerate(chosen):
            own = targets[row]
            others = [c for c in range(len(classes)) if c != own]
            other = int(confusion[own].argmax()) if position % 2 else int(rng.choice(others))
            new_labels[row] = classes[other]
        name = f"{dataset.name}-flip{int(level * 100)}-seed{seed}"
        if db.fo.dataset_exists(name):
            db.delete_dataset(name)
        flipped = dataset.clone(name, persistent=True)
        flipped.info = {**flipped.info}
        flipped.save()
        field = db.label_field(flipped)
        id_order = flipped.exists(names.EMBEDDINGS).sort_by("_id", create_index=False).values("id")
        by_id = dict(zip(columns["filepaths"], new_labels))
        paths = flipped.exists(names.EMBEDDINGS).sort_by("_id", create_index=False).values("filepath")
        flipped.set_values(f"{field}.label", dict(zip(id_order, [by_id[p] for p in paths])), key_field="id")
        flipped_paths = {columns["filepaths"][row] for row in chosen}
        redo = [i for i, p in zip(id_order, paths) if p in flipped_paths]
        flipped.set_values(names.DONE, dict.fromkeys(redo), key_field="id")
        self._audit(flipped)
        is_error = np.array([1 if p in flipped_paths else 0 for p in paths])
        return flipped, is_error


def fitted_self_confidence(signals) -> float:
    """mislabel_score's fitted-head formula with self-confidence (1 - p(label)) in place of the
    normalised margin, on the same consensus of the views and the same share of the neighbours' vote."""
    from audit.score.policy import NEIGHBOURS_WEIGHT, consensus

    if signals.given_prob is None:
        return -1.0
    agreed = consensus(signals, signals.views) if signals.views else signals.whole_image()
    score = 1.0 - agreed.given_prob
    vote = signals.neighbours
    return (1 - NEIGHBOURS_WEIGHT) * score + NEIGHBOURS_WEIGHT * vote.other_share if vote and vote.k else score


def recipe_probabilities(embeddings: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """cleanlab's recipe: out-of-fold probabilities of a 5-fold (stratified, seeded) logistic
    regression on the standardised embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return cross_val_predict(classifier, embeddings, targets, cv=folds, method="predict_proba")


if __name__ == "__main__":
    main()
