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
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from audit.errors import AuditError

FOLDS = 5
SEED = 0
# Up to this many samples the heads are scikit-learn's exact fit on one float32 copy of the training
# folds (about 1 GB at 250,000 samples of 1,280 numbers); above, `_fit_paged` fits the same objective
# with L-BFGS in torch, reading the embeddings (float16 or float32) a page at a time.
EXACT_FIT_UP_TO = 250_000
PAGE_ROWS = 32_768  # rows converted to float32 at a time by the paged fit and by the predictions
# The L2 penalty of the logistic regression on standardised embeddings weighs as much as this many
# samples' loss: scikit-learn's C = PENALTY_SAMPLES / training samples, so the head is as smooth on
# 40 photos as on 40,000. About C = 0.01 on cifar10-dev's and imagenette's folds, where it beats
# scikit-learn's default C = 1: synthetic flips AP 0.41 -> 0.49 (cifar10-dev, 5 %) and 0.92 -> 0.97
# (imagenette), cifar10-dev's MTurk errors 0.02 -> 0.06, imagenette's two truths unchanged.
PENALTY_SAMPLES = 25.0
MAX_ITERATIONS = 300
# The paged fit: L-BFGS iterations of the first fold (the others start from the previous fold's
# head, which saw three quarters of their samples) and of the others; it stops earlier once the
# objective changes by less than PAGED_TOLERANCE.
PAGED_ITERATIONS, PAGED_WARM_ITERATIONS = 100, 40
PAGED_TOLERANCE = 1e-7


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
    paged = len(embeddings) > EXACT_FIT_UP_TO
    x = embeddings if paged else np.asarray(embeddings, dtype=np.float32)  # paged: float16 pages stay so
    probabilities = np.zeros((len(x), len(classes)), dtype=np.float32)
    class_seen = np.zeros(len(x), dtype=np.int64)
    heads = []
    task = progress.add_task("fitting the head", total=folds) if progress else None
    for k in range(folds):
        train = (fold != k) & (targets >= 0)
        if paged:
            head = _fit_paged(x, train, targets, len(classes), heads[-1] if heads else None)
        else:
            head = _fit_one(x[train], targets[train], len(classes))
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


def _fit_one(x: np.ndarray, y: np.ndarray, n_classes: int) -> FoldHead:
    """Logistic regression on standardised ``x`` (a copy of the caller's, standardised in place:
    one training copy at 50,000 samples is 200 MB); classes absent from ``y`` get a logit of -inf.
    A fold whose training part holds one class only predicts that class."""
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1], np.float32)
    scale = x.std(axis=0) if len(x) else np.ones(x.shape[1], np.float32)
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    present = np.unique(y)
    weight = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -np.inf, dtype=np.float32)
    if len(present) == 0:  # nothing to learn from: every class alike
        bias[:] = 0.0
    elif len(present) == 1:
        bias[present[0]] = 0.0
    elif len(present) > 1:
        model = LogisticRegression(C=PENALTY_SAMPLES / len(x), max_iter=MAX_ITERATIONS)
        x -= mean
        x /= scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        coef, intercept = model.coef_, model.intercept_
        if len(present) == 2:  # scikit-learn's binary form: one row for the second class
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        weight[model.classes_] = coef
        bias[model.classes_] = intercept
    return FoldHead(mean.astype(np.float32), scale, weight, bias)


def _fit_paged(x: np.ndarray, train: np.ndarray, targets: np.ndarray, n_classes: int,
               start: FoldHead | None = None) -> FoldHead:
    """`_fit_one`'s head (the same standardisation and objective: the mean cross-entropy of the
    softmax over the classes plus |W|^2 / (2 PENALTY_SAMPLES), the bias unpenalised) without a
    copy of the training rows: full-batch L-BFGS in torch whose every step reads ``x[train]`` a
    page of PAGE_ROWS rows at a time, as float32, the standardisation folded into the weights.
    ``start``: a head to start from (the previous fold's). Deterministic. Two differences from
    `_fit_one`: two classes get a softmax of two rows (scikit-learn fits one), and the fit stops
    after PAGED_ITERATIONS (PAGED_WARM_ITERATIONS from ``start``) or once the objective settles."""
    rows = np.flatnonzero(train)
    width = x.shape[1]
    total, squares = np.zeros(width), np.zeros(width)
    for begin in range(0, len(x), PAGE_ROWS):
        page = torch.from_numpy(np.ascontiguousarray(x[begin:begin + PAGE_ROWS])).to(torch.float32)
        page = page[torch.from_numpy(train[begin:begin + PAGE_ROWS].copy())]
        total += page.sum(dim=0, dtype=torch.float64).numpy()
        squares += (page * page).sum(dim=0, dtype=torch.float64).numpy()
    present = np.unique(targets[rows])
    weight = np.zeros((n_classes, width), dtype=np.float32)
    bias = np.full(n_classes, -np.inf, dtype=np.float32)
    mean = (total / max(len(rows), 1)).astype(np.float32)
    scale = np.sqrt(np.maximum(squares / max(len(rows), 1) - np.square(total / max(len(rows), 1)), 0.0))
    scale = np.where(scale > 1e-6, scale, 1.0).astype(np.float32)
    if len(present) < 2:
        if len(present) == 1:
            bias[present[0]] = 0.0
        else:
            bias[:] = 0.0
        return FoldHead(mean, scale, weight, bias)
    w = torch.zeros((len(present), width), dtype=torch.float32)
    b = torch.zeros(len(present), dtype=torch.float32)
    if start is not None and np.isfinite(start.bias[present]).all():
        w = torch.as_tensor(start.weight[present].copy())
        b = torch.as_tensor(start.bias[present].copy())
    w.requires_grad_(True)
    b.requires_grad_(True)
    lookup = np.full(n_classes, -1, dtype=np.int64)
    lookup[present] = np.arange(len(present))
    mean_t, scale_t = torch.as_tensor(mean), torch.as_tensor(scale)
    pages = []  # contiguous row ranges of x (no gathered copy), with their training rows and targets
    for begin in range(0, len(x), PAGE_ROWS):
        chosen = train[begin:begin + PAGE_ROWS]
        if chosen.any():
            pages.append((begin, torch.from_numpy(chosen.copy()),
                          torch.as_tensor(lookup[targets[begin:begin + PAGE_ROWS][chosen]])))
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=PAGED_ITERATIONS if start is None else PAGED_WARM_ITERATIONS,
                                  history_size=10, tolerance_grad=1e-6, tolerance_change=PAGED_TOLERANCE,
                                  line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.zeros(())
        for begin, chosen, y in pages:
            page = torch.from_numpy(np.ascontiguousarray(x[begin:begin + PAGE_ROWS])).to(torch.float32)[chosen]
            scaled = w / scale_t  # the standardisation folded into the weights
            logits = page @ scaled.T + (b - scaled @ mean_t)
            page_loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum") / len(rows)
            page_loss.backward()
            loss += page_loss.detach()
        penalty = (w * w).sum() / (2 * PENALTY_SAMPLES)
        penalty.backward()
        return loss + penalty.detach()

    optimizer.step(objective)
    weight[present] = w.detach().numpy()
    bias[present] = b.detach().numpy()
    return FoldHead(mean, scale, weight, bias)
