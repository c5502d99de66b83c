"""The neighbours' vote: what the samples nearest in embedding space (cosine) are labelled.

Per sample: the share of its K nearest neighbours that carry another label (``other_share``: 0 =
all agree with its label, 1 = none does), the label most of them carry, how alike they are
(``similarity``: their mean cosine, low for a photo unlike anything else in the dataset;
``unlike``: the share of the dataset's samples more alike their neighbours, 1 for the most unusual
photo), and a near-duplicate carrying another label (cosine at or above DUPLICATE_SIMILARITY), if any.
The search is exact, in chunks of rows, so memory is that of the embeddings and a chunk.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from audit.signals import Duplicate, NeighbourVote

K = 10
# Cosine at or above which two photos are the same picture: on imagenette (EfficientNet-Lite0), a
# photo's mirror image, its 90 % crop or a brightness change reach 0.93-0.97 (a tenth of them less),
# while no two of its 2,494 distinct photos reach 0.90 (nor cifar10-dev's 3,083).
DUPLICATE_SIMILARITY = 0.92
CHUNK_ROWS = 256


def nearest(embeddings: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of each row's ``k`` nearest other rows, nearest first."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(x, axis=1), 1e-12)  # divided out per block: no normalised copy of x
    k = min(k, len(x) - 1)
    indices = np.zeros((len(x), max(k, 0)), dtype=np.int64)
    similarity = np.zeros((len(x), max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, similarity
    for start in range(0, len(x), CHUNK_ROWS):
        block = x[start:start + CHUNK_ROWS] @ x.T
        block /= norms[start:start + CHUNK_ROWS, None]
        block /= norms[None, :]
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # not itself
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_sim, axis=1, kind="stable")
        indices[start:start + len(block)] = np.take_along_axis(top, order, axis=1)
        similarity[start:start + len(block)] = np.take_along_axis(top_sim, order, axis=1)
    return indices, similarity


def graph(embeddings: np.ndarray, labels: list[str | None], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """The neighbours the vote reads (`nearest`), ``k`` at most one less than the median class's size:
    with eight photos a class, ten neighbours would always include other classes."""
    sizes = sorted(Counter(label for label in labels if label is not None).values())
    return nearest(embeddings, max(1, min(k, sizes[len(sizes) // 2] - 1)) if sizes else k)


def votes(embeddings: np.ndarray, labels: list[str | None], filepaths: list[str], k: int = K, *,
          around: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """Per sample, the neighbours' vote (see the module's docstring); unlabelled neighbours do not
    vote. ``around``: the `graph` when it is already known."""
    indices, similarity = around if around is not None else graph(embeddings, labels, k)
    alike_mean = similarity.mean(axis=1) if similarity.shape[1] else np.zeros(len(similarity))
    rank = np.argsort(np.argsort(alike_mean, kind="stable"), kind="stable")
    unlike = (len(alike_mean) - 1 - rank) / max(len(alike_mean) - 1, 1)
    result = []
    for row, (neighbours, alike) in enumerate(zip(indices, similarity)):
        own = labels[row]
        voters = [labels[i] for i in neighbours if labels[i] is not None]
        counts = Counter(voters)
        label, count = counts.most_common(1)[0] if counts else (None, 0)
        twin = next((i for i, s in zip(neighbours, alike) if s >= DUPLICATE_SIMILARITY and labels[i] != own
                     and labels[i] is not None), None)
        duplicate = None if twin is None else Duplicate(
            filepath=filepaths[twin], label=labels[twin], similarity=float(similarity[row][list(neighbours).index(twin)]))
        result.append(NeighbourVote(
            k=len(voters), other_share=(sum(v != own for v in voters) / len(voters)) if voters else 0.0, label=label,
            label_share=count / len(voters) if voters else 0.0, similarity=float(alike_mean[row]),
            unlike=float(unlike[row]), duplicate=duplicate).stored())
    return result
