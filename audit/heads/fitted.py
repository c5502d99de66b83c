"""A classifier head fitted on the dataset's own labels, for label sets that are not the model's.

K-fold multinomial logistic regression on the pooled embeddings the scan stored: each sample is
judged by the head fitted on the other folds, a head that never saw its label (the out-of-sample
condition cleanlab's scores rest on). Folds are drawn from the sample id (seeded), not stratified
by label: a sample's own label then never changes which samples its head learns from, so changing
it cannot change its own probabilities. A class with fewer examples than folds is still judged;
its samples carry how many examples of their class their head saw (``class_seen``: 0 means that
head never saw the class, so the label gets no probability at all).

The heads are linear on the average-pooled target layer, so the class map of any class is its
weight vector applied at each position (CAM): `FoldHead.logits_from_activations` is the head as a
function of the activations, for `audit.explain.class_maps`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from audit.errors import AuditError

FOLDS = 5
SEED = 0
PAGE_ROWS = 32_768  # rows converted to float32 at a time by the fit and by the predictions
# The L2 penalty of the logistic regression on standardised embeddings weighs as much as this many
# samples' loss (scikit-learn's C = PENALTY_SAMPLES / training samples), so the head is as smooth on
# 40 photos as on 40,000. About C = 0.01 on cifar10-dev's and imagenette's folds, where it beats
# scikit-learn's default C = 1: synthetic flips AP 0.41 -> 0.49 (cifar10-dev, 5 %) and 0.92 -> 0.97
# (imagenette), cifar10-dev's MTurk errors 0.02 -> 0.06, imagenette's two truths unchanged.
PENALTY_SAMPLES = 25.0
# `_fit_fold`: each fold's head is ITERATIONS L-BFGS steps from zero (scikit-learn's optimum within
# 1e-4 in probability, mean over cifar10-dev's and imagenette's folds, in a third to a half of its
# time), on at most HELD_ROWS of its training rows held as float32 (a seeded subsample above: 1 GB);
# TOLERANCE stops it once the objective changes by less. On 400,000 samples of `benchmarks/scale.py`
# the subsample ranks the flipped labels as paged steps over all 320,000 rows did (AP 0.946 against
# 0.947, the probabilities 0.001 apart on average), and its time no longer grows with the dataset.
ITERATIONS = 150
HELD_ROWS = 200_000
TOLERANCE = 1e-7
# Up to this many training rows a fold's steps run on one thread: its products are too small to
# share (cifar10-dev's five folds: 3.1 s on one thread, 41 s on two while other work shares the 2 cores).
ONE_THREAD_UP_TO = 20_000


def fold_of(sample_id: str, folds: int = FOLDS, seed: int = SEED) -> int:
    """The fold a sample belongs to: a hash of its id, so neither its label nor the others' move it."""
    return int(hashlib.sha1(f"{seed}:{sample_id}".encode()).hexdigest()[:8], 16) % folds


@dataclass
class FoldHead:
    """Standardisation and a linear layer over the embedding: logits = W ((x - mean) / scale) + b,
    over all the dataset's classes (a class its training folds lacked gets a logit of -inf)."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (classes, D)
    bias: np.ndarray  # (classes,)

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax over the dataset's classes, (N, D) -> (N, classes)."""
        logits = ((embeddings - self.mean) / self.scale) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def logits_from_activations(self, activations: torch.Tensor) -> torch.Tensor:
        """The head on (N, D, H, W) activations: average pooling, then the linear layer (differentiable)."""
        device = activations.device
        pooled = activations.float().mean(dim=(2, 3))
        scale = torch.as_tensor(self.scale, dtype=torch.float32, device=device)
        weight = torch.as_tensor(self.weight, dtype=torch.float32, device=device)
        bias = torch.as_tensor(self.bias, dtype=torch.float32, device=device)
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device)
        return ((pooled - mean) / scale) @ weight.T + bias


@dataclass
class FittedHeads:
    """One head per fold and, per sample, the out-of-fold probabilities."""

    classes: list[str]  # the dataset's labels, sorted
    heads: list[FoldHead]
    folds: np.ndarray  # (N,) each sample's fold
    probabilities: np.ndarray  # (N, classes): each sample's from the head of its own fold
    class_seen: np.ndarray  # (N,) examples of the sample's label its head was fitted on
    class_counts: dict[str, int]  # samples per label


def fit_heads(sample_ids: list[str], embeddings: np.ndarray, labels: list[str | None],
              folds: int = FOLDS, seed: int = SEED, progress=None) -> FittedHeads:
    """Fit the K fold heads on the labelled samples (unlabelled ones are judged, never learned
    from) and return every sample's out-of-fold probabilities. Raises AuditError with fewer than
    two classes. ``progress``: a rich Progress or None."""
    classes = sorted({label for label in labels if label is not None})
    if len(classes) < 2:
        raise AuditError(f"a fitted head needs at least two classes; the labels hold {len(classes)}")
    index = {label: i for i, label in enumerate(classes)}
    targets = np.array([index.get(label, -1) for label in labels])
    fold = np.array([fold_of(sample_id, folds, seed) for sample_id in sample_ids])
    x = embeddings  # kept as given (float16 at scale): each fold holds its training rows as float32
    probabilities = np.zeros((len(x), len(classes)), dtype=np.float32)
    class_seen = np.zeros(len(x), dtype=np.int64)
    heads = []
    task = progress.add_task("fitting the head", total=folds) if progress else None
    for k in range(folds):
        train = (fold != k) & (targets >= 0)
        head = _fit_fold(x, train, targets, len(classes))
        heads.append(head)
        mine = fold == k
        if mine.any():
            rows = np.flatnonzero(mine)
            for start in range(0, len(rows), PAGE_ROWS):
                page = rows[start:start + PAGE_ROWS]
                probabilities[page] = head.probabilities(np.asarray(x[page], dtype=np.float32))
            counts = np.bincount(targets[train], minlength=len(classes))
            class_seen[mine] = np.where(targets[mine] >= 0, counts[np.maximum(targets[mine], 0)], 0)
        if progress:
            progress.advance(task)
    counts = Counter(label for label in labels if label is not None)
    return FittedHeads(classes, heads, fold, probabilities, class_seen, dict(counts))


def _fit_fold(x: np.ndarray, train: np.ndarray, targets: np.ndarray, n_classes: int) -> FoldHead:
    """The head of one fold: multinomial logistic regression on the standardised training rows
    (``x[train]``; classes absent from them get a logit of -inf, a fold with one class only predicts
    it), scikit-learn's objective: the mean cross-entropy of the softmax plus |W|^2 / (2
    PENALTY_SAMPLES), the bias unpenalised (two classes: a softmax of two rows penalised as
    scikit-learn's one). L-BFGS in torch from zero, on at most HELD_ROWS of the training rows (a
    seeded subsample above) held as float32, the standardisation folded into the weights.
    Deterministic; a sample's own label cannot reach its head (`tests/test_any_labels.py`)."""
    rows = np.flatnonzero(train)
    if len(rows) > HELD_ROWS:
        rows = np.sort(np.random.default_rng(SEED).choice(rows, HELD_ROWS, replace=False))
    chosen = np.zeros(len(x), dtype=bool)
    chosen[rows] = True
    held = list(_pages(x, chosen, targets))
    width = x.shape[1]
    total, squares = torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
    for page, _ in held:
        total += page.sum(dim=0, dtype=torch.float64)
        squares += (page * page).sum(dim=0, dtype=torch.float64)
    count = max(len(rows), 1)
    mean = total.numpy() / count
    scale = np.sqrt(np.maximum(squares.numpy() / count - np.square(mean), 0.0))
    mean, scale = mean.astype(np.float32), np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    present = np.unique(targets[rows])
    weight = np.zeros((n_classes, width), dtype=np.float32)
    bias = np.full(n_classes, -np.inf, dtype=np.float32)
    if len(present) < 2:
        bias[present if len(present) else slice(None)] = 0.0
        return FoldHead(mean, scale, weight, bias)
    lookup = np.full(n_classes, -1, dtype=np.int64)
    lookup[present] = np.arange(len(present))
    batches = [(page, torch.as_tensor(lookup[y])) for page, y in held]
    w = torch.zeros((len(present), width), dtype=torch.float32, requires_grad=True)
    b = torch.zeros(len(present), dtype=torch.float32, requires_grad=True)
    with _threads(1 if len(rows) <= ONE_THREAD_UP_TO else torch.get_num_threads()):
        _lbfgs(w, b, torch.as_tensor(mean), torch.as_tensor(scale), batches, len(rows), two_classes=len(present) == 2)
    weight[present] = w.detach().numpy()
    bias[present] = b.detach().numpy()
    return FoldHead(mean, scale, weight, bias)


@contextmanager
def _threads(count: int):
    """Torch's intra-op threads set to ``count`` for the block."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _pages(x: np.ndarray, chosen: np.ndarray, targets: np.ndarray):
    """(float32 rows, targets) of the ``chosen`` rows of ``x``, a contiguous page of PAGE_ROWS at a time."""
    for begin in range(0, len(x), PAGE_ROWS):
        mask = chosen[begin:begin + PAGE_ROWS]
        if mask.any():
            page = torch.from_numpy(np.ascontiguousarray(x[begin:begin + PAGE_ROWS])).to(torch.float32)
            yield page[torch.from_numpy(mask.copy())], targets[begin:begin + PAGE_ROWS][mask]


def _lbfgs(w: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, batches: list, count: int,
           *, two_classes: bool = False) -> None:
    """ITERATIONS L-BFGS steps on (w, b) in place: mean cross-entropy over the ``count`` rows of
    ``batches``, (float32 rows, class indices) pairs, plus the penalty (doubled for ``two_classes``:
    the two rows' difference is scikit-learn's one, and each is half of it)."""
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=ITERATIONS, history_size=10, tolerance_grad=1e-6,
                                  tolerance_change=TOLERANCE, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.zeros(())
        for page, y in batches:
            scaled = w / scale  # the standardisation folded into the weights
            logits = page @ scaled.T + (b - scaled @ mean)
            page_loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum") / count
            page_loss.backward()
            loss += page_loss.detach()
        penalty = (w * w).sum() / (PENALTY_SAMPLES if two_classes else 2 * PENALTY_SAMPLES)
        penalty.backward()
        return loss + penalty.detach()

    optimizer.step(objective)
