"""Synthetic label noise: how well mislabel_score ranks flipped labels first, beside the
probability-only baselines, with and without the explanation signals (second-opinion views).

On ../shared/data/imagenet-samples (1000 real ImageNet images, one per class, label from the file
name) a seeded fraction of labels is flipped: half to a random other class, half to the model's
own second choice (the hard kind). For each noise level the images go through the scan's own
evidence code (`audit.scan.evidence.batch_evidence`: whole image, class maps of the given labels, and
second opinions where in doubt) and are scored with the scan's own scoring; no database.

    .venv/bin/python benchmarks/label_noise.py [--limit N] [--seed 0] [--model NAME]...

With several --model (or --models lite) the ensemble is scored, and each model's own baselines
are printed too.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.data.classes import resolve_imagenet_label  # noqa: E402
from audit.evaluate.labels import BASELINES, balanced_accuracy, ranking_figures  # noqa: E402
from audit.images import open_rgb  # noqa: E402
from audit.models.registry import PRESETS, load_model  # noqa: E402
from audit.names import DEFAULT_MODEL, SUSPECTED_MISLABEL  # noqa: E402
from audit.scan.evidence import EvidenceOptions, batch_evidence, sample_signals
from audit.score.policy import CONFIDENT, judge

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
NOISE_LEVELS = (0.05, 0.10, 0.20)
BATCH_SIZE = 32


def batches(models, paths: list[Path]):
    """Batches as the scan's loader makes them (every model's preprocessing of the same decode)."""
    min_side = max(model.preprocess.resize_short for model in models)
    for start in range(0, len(paths), BATCH_SIZE):
        chunk = paths[start:start + BATCH_SIZE]
        pictures = [open_rgb(path, min_side) for path in chunk]
        yield start, {"images": [torch.stack([m.preprocess(p) for p in pictures]) for m in models],
                      "width": [p.width for p in pictures], "height": [p.height for p in pictures],
                      "error": [""] * len(chunk), "filepath": [str(path) for path in chunk]}


@torch.inference_mode()
def mean_probabilities(models, paths: list[Path]) -> torch.Tensor:
    """(N, classes) whole-image probabilities, averaged over the models."""
    rows = []
    for _, batch in track(list(batches(models, paths)), description="probabilities", console=Console(stderr=True)):
        rows.append(torch.stack([torch.softmax(m.forward(images)[0], 1) for m, images in zip(models, batch["images"])]).mean(0))
    return torch.cat(rows)


def signals_for(models, paths: list[Path], given: list[int], description: str) -> list[dict]:
    """The scan's audit_signals of every image under the labels ``given``."""
    signals = []
    for start, batch in track(list(batches(models, paths)), description=description, console=Console(stderr=True)):
        indices = given[start:start + BATCH_SIZE]
        for sample, index in zip(batch_evidence(models, batch, indices, EvidenceOptions()), indices):
            signals.append(sample_signals(models, sample, models[0].classes[index], index))
    return signals


def flip_labels(true: list[int], probabilities: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], np.ndarray]:
    """Labels with ``fraction`` of them flipped (half random, half to the model's second choice)."""
    rng = random.Random(seed)
    chosen = rng.sample(range(len(true)), round(fraction * len(true)))
    given, flipped = list(true), np.zeros(len(true), bool)
    for position, row in enumerate(chosen):
        if position % 2 == 0:
            given[row] = rng.choice([c for c in range(probabilities.shape[1]) if c != true[row]])
        else:
            ranked = probabilities[row].argsort(descending=True).tolist()
            given[row] = next(c for c in ranked if c != true[row])
        flipped[row] = True
    return given, flipped


def figures_for(signals: list[dict], flipped: np.ndarray) -> dict[str, dict]:
    ensemble = " (ensemble)" if signals[0].get("models") else ""
    rankings = {"mislabel_score": [judge(s).mislabel_score for s in signals],
                "mislabel_score without views": [judge(s, use_views=False).mislabel_score for s in signals]}
    rankings.update({f"{name}{ensemble}": [f(s) for s in signals] for name, f in BASELINES.items()})
    for model in signals[0].get("models", {}):
        rankings.update({f"{name} ({model})": [f(s["models"][model]) for s in signals] for name, f in BASELINES.items()})
    return {name: ranking_figures(flipped, np.array(scores)) for name, scores in rankings.items()}


def separation_for(signals: list[dict], flipped: np.ndarray) -> tuple[int, float, float]:
    """Among the samples the model misclassifies under the noisy labels: how many, and how well the
    category (``suspected_mislabel`` = flipped) and a confidence threshold at CONFIDENT tell the
    flipped labels from the classifier's failures, as balanced accuracy (0.5 = chance)."""
    rows = [i for i, s in enumerate(signals) if s["pred_index"] != s["given_index"]]
    truth = flipped[rows]
    category = np.array([judge(signals[i]).category == SUSPECTED_MISLABEL for i in rows])
    confident = np.array([signals[i]["pred_prob"] >= CONFIDENT for i in rows])
    return len(rows), balanced_accuracy(truth, category), balanced_accuracy(truth, confident)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", action="append", help="model name; repeat for an ensemble")
    parser.add_argument("--models", choices=sorted(PRESETS), help="a preset ensemble")
    args = parser.parse_args()
    names = list(dict.fromkeys((args.model or []) + (PRESETS[args.models] if args.models else []))) or [DEFAULT_MODEL]
    paths = sorted(SAMPLES.glob("*.JPEG"))[: args.limit]
    true = [resolve_imagenet_label(p.name.split("_")[0]) for p in paths]
    models = [load_model(name, device="auto") for name in names]
    probabilities = mean_probabilities(models, paths)
    table = Table(title=f"label noise on {len(paths)} ImageNet images ({' + '.join(names)}, seed {args.seed})")
    for column in ("noise", "ranking", "AUROC", "AP", "P@50"):
        table.add_column(column, justify="left" if column in ("noise", "ranking") else "right")
    split = Table("noise", "misclassified", "category", f"confidence >= {CONFIDENT}",
                  title="flipped label vs classifier failure among the misclassified (balanced accuracy)")
    for fraction in NOISE_LEVELS:
        given, flipped = flip_labels(true, probabilities, fraction, args.seed)
        signals = signals_for(models, paths, given, f"noise {fraction:.0%}")
        for name, figures in figures_for(signals, flipped).items():
            table.add_row(f"{fraction:.0%}", name, f"{figures['auroc']:.3f}", f"{figures['average_precision']:.3f}",
                          f"{figures['precision_at'].get('50', float('nan')):.2f}")
        table.add_section()
        count, by_category, by_confidence = separation_for(signals, flipped)
        split.add_row(f"{fraction:.0%}", str(count), f"{by_category:.3f}", f"{by_confidence:.3f}")
    Console(width=120).print(table)
    Console(width=120).print(split)


if __name__ == "__main__":
    main()
