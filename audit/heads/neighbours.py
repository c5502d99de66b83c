"""The neighbours' vote: what the samples nearest in embedding space (cosine) are labelled.

Per sample: the share of its K nearest neighbours that carry another label (``other_share``: 0 =
all agree with its label, 1 = none does), the label most of them carry, how alike they are
(``similarity``: their mean cosine, low for a photo unlike anything else in the dataset;
``unlike``: the share of the dataset's samples more alike their neighbours, 1 for the most unusual
photo), and a near-duplicate carrying another label (cosine at or above DUPLICATE_SIMILARITY), if any.

Below APPROXIMATE_FROM samples the search is exact, in chunks of rows, so memory is that of the
embeddings and a chunk. From APPROXIMATE_FROM on (exact search is N² products: 150 s at 50,000
samples, 17 hours at a million on two cores) the candidates come from an approximate index (FAISS:
a graph, HNSW, over the unit embeddings' first REDUCED_DIMENSIONS principal directions) and are
re-ranked by their exact cosine on the full embeddings, so the similarities and the
near-duplicates mean the same as with the exact search; only a neighbour the index misses can
differ (recall@10 against the exact search: docs/benchmarks.md#neighbours-at-scale). The graph is
built by several threads, so two runs can differ in a rare neighbour.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from audit.signals import Duplicate, NeighbourVote

K = 10
# Cosine at or above which two photos are the same picture: on imagenette (EfficientNet-Lite0), a
# photo's mirror image, its 90 % crop or a brightness change reach 0.93-0.97 (a tenth of them less),
# while no two of its 2,494 distinct photos reach 0.90 (nor cifar10-dev's 3,083).
DUPLICATE_SIMILARITY = 0.92
CHUNK_ROWS = 256
# The approximate search, from this many samples on (see the module's docstring).
APPROXIMATE_FROM = 50_000
REDUCED_DIMENSIONS = 256  # the index's vectors: the unit embeddings on their first principal directions
CANDIDATES = 5  # times k candidates from the index, re-ranked by their exact cosine
LISTS_PER_ROOT = 2  # the inverted file's lists: 2 sqrt(N) (2,000 at a million samples)
PROBES = 128  # lists searched per query
TRAINING_PER_LIST = 40  # samples per list to place the lists (k-means) and the principal directions
PAGE_ROWS = 20_000  # rows converted to float32 at a time
RERANK_ROWS = 1000  # rows whose candidates are gathered at full size at a time
SEED = 0
# The index: "hnsw" (a graph: its search time grows as log N) or "ivf" (an inverted file: with
# PROBES of 2 sqrt(N) lists searched, its time grows as N^1.5). On 50,000 made embeddings, 256
# dimensions and 5 x k candidates: HNSW recall@10 0.964 in 46 s, IVF (128 probes) 0.971 in 145 s;
# IVF's search alone took 193 s of CPU at 100,000 samples, so about 100 minutes at a million.
INDEX = "hnsw"
GRAPH_LINKS, GRAPH_BUILD_BREADTH, GRAPH_SEARCH_BREADTH = 32, 64, 128  # HNSW's M, efConstruction, efSearch


def nearest(embeddings: np.ndarray, k: int = K, *, exact: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of each row's ``k`` nearest other rows, nearest first.
    ``embeddings``: float32 or float16 rows. ``exact``: the exact search (default: below
    APPROXIMATE_FROM rows), else the approximate one (`approximate_nearest`)."""
    if exact is None:
        exact = len(embeddings) < APPROXIMATE_FROM
    k = min(k, len(embeddings) - 1)
    if k > 0 and not exact:
        return approximate_nearest(embeddings, k)
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(x, axis=1), 1e-12)  # divided out per block: no normalised copy of x
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


def approximate_nearest(embeddings: np.ndarray, k: int = K, *, dimensions: int | None = REDUCED_DIMENSIONS,
                        probes: int = PROBES, candidates: int = CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
    """`nearest` from a FAISS index (INDEX: HNSW, or an inverted file searching ``probes`` lists;
    inner product) over the unit embeddings projected on their first ``dimensions`` principal
    directions (uncentred, so that inner products are kept; None: the full embeddings), computed
    from a seeded sample; each row's ``candidates`` x ``k`` nearest there are re-ranked by their
    exact cosine on the full embeddings. Memory: the index (N x dimensions float32 and, for HNSW,
    its links: 1.3 GB at a million rows and 256) besides the caller's embeddings."""
    import faiss  # a dependency of the large datasets only: imported when one comes

    x = embeddings
    count, width = x.shape
    norms = np.empty(count, dtype=np.float32)
    for start in range(0, count, PAGE_ROWS):
        norms[start:start + PAGE_ROWS] = np.maximum(np.linalg.norm(_page(x, start, start + PAGE_ROWS), axis=1), 1e-12)
    lists = int(np.clip(LISTS_PER_ROOT * np.sqrt(count), 16, count // TRAINING_PER_LIST or 1))
    rng = np.random.default_rng(SEED)
    sample = np.sort(rng.choice(count, size=min(count, TRAINING_PER_LIST * lists), replace=False))
    training = x[sample].astype(np.float32) / norms[sample, None]
    basis = None
    if dimensions is not None and dimensions < width:
        second_moment = training.T.astype(np.float64) @ training
        basis = np.ascontiguousarray(np.linalg.eigh(second_moment)[1][:, ::-1][:, :dimensions], dtype=np.float32)
        training = training @ basis

    def reduced(start: int, stop: int) -> np.ndarray:
        unit = _page(x, start, stop) / norms[start:stop, None]
        return np.ascontiguousarray(unit @ basis if basis is not None else unit, dtype=np.float32)

    if INDEX == "hnsw":
        index = faiss.IndexHNSWFlat(training.shape[1], GRAPH_LINKS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = GRAPH_BUILD_BREADTH
    else:
        quantizer = faiss.IndexFlatIP(training.shape[1])
        index = faiss.IndexIVFFlat(quantizer, training.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = SEED
        index.train(training)
    del training
    for start in range(0, count, PAGE_ROWS):
        index.add(reduced(start, min(start + PAGE_ROWS, count)))
    if INDEX == "hnsw":
        index.hnsw.efSearch = max(GRAPH_SEARCH_BREADTH, candidates * k + 1)
    else:
        index.nprobe = min(probes, lists)
    wanted = min(candidates * k + 1, count)
    indices = np.zeros((count, k), dtype=np.int64)
    similarity = np.zeros((count, k), dtype=np.float32)
    for start in range(0, count, RERANK_ROWS):
        stop = min(start + RERANK_ROWS, count)
        found = index.search(reduced(start, stop), wanted)[1]
        rows = np.arange(start, stop)
        valid = (found >= 0) & (found != rows[:, None])
        found = np.where(valid, found, 0)
        gathered = x[found].astype(np.float32)  # (rows, wanted, width)
        exact = np.einsum("rcw,rw->rc", gathered, _page(x, start, stop)) / norms[found] / norms[start:stop, None]
        del gathered
        exact[~valid] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        indices[start:stop] = np.take_along_axis(found, order, axis=1)
        similarity[start:stop] = np.take_along_axis(exact, order, axis=1)
    short = np.flatnonzero(~np.isfinite(similarity).all(axis=1))  # fewer than k candidates: searched exactly
    cosine = np.empty(count, dtype=np.float32)
    for row in short:
        for start in range(0, count, PAGE_ROWS):  # a page at a time: no float32 copy of all the rows
            cosine[start:start + PAGE_ROWS] = _page(x, start, start + PAGE_ROWS) @ _page(x, row, row + 1)[0]
        cosine /= norms * norms[row]
        cosine[row] = -np.inf
        best = np.argsort(-cosine, kind="stable")[:k]
        indices[row], similarity[row] = best, cosine[best]
    return indices, similarity


def _page(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.asarray(x[start:stop], dtype=np.float32)


def graph(embeddings: np.ndarray, labels: list[str | None], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """The neighbours the vote reads (`nearest`), ``k`` at most one less than the median class's size:
    with eight photos a class, ten neighbours would always include other classes."""
    sizes = sorted(Counter(label for label in labels if label is not None).values())
    return nearest(embeddings, max(1, min(k, sizes[len(sizes) // 2] - 1)) if sizes else k)


class Votes(Sequence):
    """The neighbours' votes of every sample (`votes`), each computed when it is read: a million
    samples' dicts held at once would take a gigabyte."""

    def __init__(self, labels: list[str | None], filepaths: list[str], around: tuple[np.ndarray, np.ndarray]):
        self.labels, self.filepaths = labels, filepaths
        self.indices, self.similarity = around
        alike_mean = self.similarity.mean(axis=1) if self.similarity.shape[1] else np.zeros(len(self.similarity))
        rank = np.argsort(np.argsort(alike_mean, kind="stable"), kind="stable")
        self.alike_mean = alike_mean
        self.unlike = (len(alike_mean) - 1 - rank) / max(len(alike_mean) - 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[r] for r in range(*row.indices(len(self)))]
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(row)
        labels, neighbours, alike = self.labels, self.indices[row], self.similarity[row]
        own = labels[row]
        voters = [labels[i] for i in neighbours if labels[i] is not None]
        counts = Counter(voters)
        label, count = counts.most_common(1)[0] if counts else (None, 0)
        twin = next(((i, s) for i, s in zip(neighbours, alike) if s >= DUPLICATE_SIMILARITY and labels[i] != own
                     and labels[i] is not None), None)
        duplicate = None if twin is None else Duplicate(
            filepath=self.filepaths[twin[0]], label=labels[twin[0]], similarity=float(twin[1]))
        return NeighbourVote(
            k=len(voters), other_share=(sum(v != own for v in voters) / len(voters)) if voters else 0.0, label=label,
            label_share=count / len(voters) if voters else 0.0, similarity=float(self.alike_mean[row]),
            unlike=float(self.unlike[row]), duplicate=duplicate).stored()


def votes(embeddings: np.ndarray, labels: list[str | None], filepaths: list[str], k: int = K, *,
          around: tuple[np.ndarray, np.ndarray] | None = None) -> Votes:
    """Per sample, the neighbours' vote (see the module's docstring), a sequence of dicts computed
    as they are read; unlabelled neighbours do not vote. ``around``: the `graph` when it is
    already known."""
    return Votes(labels, filepaths, around if around is not None else graph(embeddings, labels, k))
