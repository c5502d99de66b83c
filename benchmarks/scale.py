"""The second phase (fitted head) and the scoring at N samples, without images.

    python benchmarks/scale.py --real-from mongodb://HOST:PORT [--datasets a,b,...]   # once: the real embeddings
    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--flip 0.05] [--keep]

The real embeddings (EfficientNet-Lite0, 1,280 float32), labels and first-phase signals of scanned
datasets are read once from another FiftyOne database (read only: plain pymongo reads) into
benchmarks/out/scale-real.npz. By default the datasets of the project's shared photos scanned with
``--head fit``: 5,000 CIFAR-10N photos, 3,083 cifar10-dev photos (the same 10 classes) and 2,494
imagenette photos (10 classes): 10,577 embeddings, 20 classes. (``--real-from`` alone also exports
the ImageNet-val dev photos for the neighbours' recall, ``benchmarks/scale.py --recall``; the
scale runs skip any source outside ``SCALE_SOURCES``.)

Each of the N samples is made from real embedding e_i (cycled through the real ones in a seeded
order): ``x = a e_i + (1 - a) e_j + 0.5 s z`` with ``a`` uniform in [0.5, 1], ``e_j`` a random real
embedding of e_i's label, ``s`` the real embeddings' per-dimension standard deviation and ``z``
standard normal noise. It carries e_i's label, except for a share ``--flip`` (default 5 %) given
another label of e_i's source at random, and e_i's first-phase signals (``audit_signals``) and
marks the scan as done (``audit_done``), so that `audit.scan.second_phase.run` takes it as
scanned. Its file does not exist: no image is read (second opinions are off; they would need the
images).

Each step runs in a process of its own, which reports its time and its peak resident memory
(``ru_maxrss``): building the dataset (ingest, then the embeddings, signals and done marker written
in bulk), the second phase (``second_phase.run``, head ``fit``, with EfficientNet-Lite0 loaded as
in a scan), and the scoring (``audit.score.triage.rescore``). Then a table.

The database: FIFTYONE_DATABASE_URI's when set (the datasets ``scale-N`` are then kept and reused
with ``--keep``), else a throwaway mongod.

    python benchmarks/scale.py --recall

recall@10 of the approximate neighbours (`audit.heads.neighbours.approximate_nearest`) against
the exact search, on every real embedding and on 50,000 made from them as above.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

REAL = HERE / "out" / "scale-real.npz"
DATASETS = ["x-c10n-fit", "x-c10dev", "x-inette", "x-inval"]
SCALE_SOURCES = ["x-c10n-fit", "x-c10dev", "x-inette"]
SCAN_KEY = "scale-benchmark"
PAGE = 5000  # samples written at a time
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--flip", type=float, default=0.05, help="share of labels flipped (default 0.05)")
    parser.add_argument("--keep", action="store_true", help="reuse a dataset scale-N already built")
    parser.add_argument("--real-from", help="the FiftyOne database URI to read the real embeddings from (read only)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="its datasets (default: %(default)s)")
    parser.add_argument("--recall", action="store_true", help="measure the approximate neighbours' recall@10")
    parser.add_argument("--recall-at", type=int, help="... on 1,000 rows sampled among this many made ones")
    parser.add_argument("--step", choices=["build", "phase", "rescore"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.real_from:
        export_real(args.real_from, args.datasets.split(","))
        return
    if args.recall:
        recall()
        return
    if args.recall_at:
        recall_at(args.recall_at)
        return
    from throwaway_db import benchmark_database  # imports no fiftyone

    benchmark_database("audit-scale-")
    if args.step:
        figures = {"build": build, "phase": second_phase, "rescore": rescore}[args.step](args.n, args)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        figures["peak_mb"] = usage.ru_maxrss / 1024
        figures["cpu_seconds_process"] = usage.ru_utime + usage.ru_stime
        print("RESULT " + json.dumps(figures), flush=True)
        return
    rows = []
    for n in [int(size) for size in args.sizes.split(",")]:
        row = {"n": n}
        for step in ("build", "phase", "rescore"):
            command = [sys.executable, __file__, "--step", step, "--n", str(n), "--flip", str(args.flip)]
            command += ["--keep"] if args.keep else []
            output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            print(output, end="", flush=True)
            result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
            row.update({f"{step}_{key}": value for key, value in result.items()})
        rows.append(row)
    print()
    print("| samples | build (s) | second phase (s) | its CPU (s) | its peak RSS (MB) | rescore (s) | its CPU (s) "
          "| its peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['n']:,} | {row['build_seconds']:,.0f} | {row['phase_seconds']:,.0f} | {row['phase_cpu_seconds']:,.0f} "
              f"| {row['phase_peak_mb']:,.0f} | {row['rescore_seconds']:,.0f} | {row['rescore_cpu_seconds']:,.0f} "
              f"| {row['rescore_peak_mb']:,.0f} |")


def export_real(uri: str, datasets: list[str]) -> None:
    """The embeddings, labels, sources and first-phase signals of ``datasets`` in the database at
    ``uri`` (read with find() only) into REAL."""
    import fiftyone.core.utils as fou
    import pymongo

    database = pymongo.MongoClient(uri)["fiftyone"]
    vectors, labels, sources, signals = [], [], [], []
    for name in datasets:
        collection = database[database.datasets.find_one({"name": name})["sample_collection_name"]]
        query = {"embeddings": {"$exists": True, "$ne": None}}
        for doc in collection.find(query, {"embeddings": 1, "ground_truth.label": 1, "audit_signals": 1}).sort("_id", 1):
            vectors.append(fou.deserialize_numpy_array(doc["embeddings"]))
            labels.append((doc.get("ground_truth") or {}).get("label"))
            sources.append(name)
            signals.append(json.dumps(doc.get("audit_signals") or {}))
    REAL.parent.mkdir(parents=True, exist_ok=True)
    np.savez(REAL, embeddings=np.stack(vectors).astype(np.float32), labels=np.array(labels, dtype=str),
             source=np.array(sources), signals=np.array(signals))
    print(f"{len(vectors):,} real embeddings of {len(datasets)} datasets -> {REAL}")


def real_embeddings(sources: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, labels, sources, signals as JSON) of REAL, those of ``sources`` only if given."""
    if not REAL.exists():
        raise SystemExit(f"no {REAL}: run benchmarks/scale.py --real-from URI first (the database of a scan "
                         "with --head fit of the shared photos)")
    data = np.load(REAL)
    keep = np.isin(data["source"], sources) if sources else np.ones(len(data["source"]), dtype=bool)
    return data["embeddings"][keep], data["labels"][keep], data["source"][keep], data["signals"][keep]


def synthetic(real: np.ndarray, labels: np.ndarray, n: int, seed: int = SEED, start: int = 0,
              stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start`` to ``stop`` of the N samples made from ``real`` (see the module's docstring):
    (float32 embeddings, the index of each one's real embedding e_i). Any range of rows is the
    same whatever the paging."""
    stop = n if stop is None else stop
    order = np.random.default_rng(seed).permutation(n) % len(real)
    by_label: dict[str, np.ndarray] = {}
    for label in np.unique(labels):
        by_label[label] = np.flatnonzero(labels == label)
    spread = real.std(axis=0)
    rng = np.random.default_rng([seed, start])
    origin = order[start:stop]
    partner = np.array([by_label[labels[i]][rng.integers(len(by_label[labels[i]]))] for i in origin], dtype=np.int64)
    share = rng.uniform(0.5, 1.0, len(origin)).astype(np.float32)[:, None]
    noise = rng.standard_normal((len(origin), real.shape[1]), dtype=np.float32)
    return (share * real[origin] + (1 - share) * real[partner] + 0.5 * spread * noise).astype(np.float32), origin


def flipped_labels(labels: np.ndarray, sources: np.ndarray, origin: np.ndarray, share: float, n: int, start: int,
                   seed: int = SEED) -> tuple[list[str], np.ndarray]:
    """The labels of rows ``start``.. (their real embedding's, a ``share`` of them flipped to
    another label of the same source at random) and which were flipped."""
    rng = np.random.default_rng([seed, start, 1])
    flip = rng.random(len(origin)) < share
    result = []
    for i, flipped in zip(origin, flip):
        own = labels[i]
        if flipped:
            others = sorted(set(labels[sources == sources[i]]) - {own})
            own = others[rng.integers(len(others))]
        result.append(str(own))
    return result, flip


def build(n: int, args) -> dict:
    """The dataset scale-N (see the module's docstring); its build time."""
    import fiftyone as fo
    import fiftyone.core.utils as fou
    from pymongo import UpdateOne

    from audit import names
    from audit.data.ingest import ingest
    from audit.data.records import Record
    from audit.store import db

    name = f"scale-{n}"
    db.ensure_database()
    if fo.dataset_exists(name):
        if args.keep and len(fo.load_dataset(name)) == n and len(fo.load_dataset(name).exists(names.DONE)) == n:
            return {"seconds": float("nan"), "kept": True}
        fo.delete_dataset(name)
    real, labels, sources, signals = real_embeddings(SCALE_SOURCES)
    order = np.random.default_rng(SEED).permutation(n) % len(real)
    start_time = time.perf_counter()
    all_labels = []
    for start in range(0, n, PAGE):
        origin = order[start:start + PAGE]
        page_labels, _ = flipped_labels(labels, sources, origin, args.flip, n, start)
        all_labels += page_labels
    records = (Record(filepath=f"/nonexistent/scale/{row // 10_000:03d}/{row:07d}.jpg", label=label, width=32, height=32)
               for row, label in enumerate(all_labels))
    dataset, added = ingest(name, records, warn=lambda line: None)
    ingested = time.perf_counter() - start_time
    db.declare_audit_fields(dataset)
    ids = dataset.values("_id")  # in insertion order, the rows' order
    collection = dataset._sample_collection
    parsed = [json.loads(s) for s in signals]
    for start in range(0, n, PAGE):
        vectors, origin = synthetic(real, labels, n, start=start, stop=min(start + PAGE, n))
        collection.bulk_write([
            UpdateOne({"_id": ids[start + row]}, {"$set": {
                names.EMBEDDINGS: fou.serialize_numpy_array(vector), names.SIGNALS: parsed[origin[row]], names.DONE: SCAN_KEY}})
            for row, vector in enumerate(vectors)], ordered=False)
    seconds = time.perf_counter() - start_time
    print(f"built scale-{n}: {added:,} samples ingested in {ingested:.0f} s, embeddings and signals written, "
          f"{seconds:.0f} s in all", flush=True)
    return {"seconds": seconds, "ingest_seconds": ingested, "cpu_seconds": _cpu()}


def second_phase(n: int, args) -> dict:
    """The second phase with a fitted head over scale-N (every sample redone); its time."""
    import fiftyone as fo

    import audit
    from audit import names
    from audit.heads.choice import FIT, HeadChoice
    from audit.scan import second_phase as phase
    from audit.store import db

    db.ensure_database()
    dataset = fo.load_dataset(f"scale-{n}")
    dataset._sample_collection.update_many({}, {"$unset": {names.HEAD_DONE: ""}})
    models = audit.load_models(audit.model_names())
    steps = _timed_steps(phase)
    start, cpu = time.perf_counter(), _cpu()
    summary = phase.run(dataset, models, SCAN_KEY, HeadChoice(FIT, "scale benchmark"))
    seconds = time.perf_counter() - start
    info = db.audit_info(dataset)
    print(f"second phase over scale-{n}: {summary.judged:,} judged in {seconds:.0f} s; "
          f"similarity index: {info.get('similarity_index')}", flush=True)
    return {"seconds": seconds, "cpu_seconds": _cpu() - cpu, "judged": summary.judged, "steps": steps}


def _timed_steps(phase) -> dict:
    """Wrap the second phase's steps (reading the embeddings, the neighbours, the fit, the plane, the
    App's index) to time them; the dict filled with their seconds as they run."""
    steps: dict[str, float] = {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - start
                usage = resource.getrusage(resource.RUSAGE_SELF)
                print(f"  {name}: {steps[name]:.0f} s (peak so far {usage.ru_maxrss / 1024:,.0f} MB)", flush=True)
        return wrapper

    for name in ("stored_embeddings", "fit_heads", "principal_plane", "index_embeddings"):
        setattr(phase, name, timed(name, getattr(phase, name)))
    phase.neighbours = _Wrapped(phase.neighbours, {"graph": timed("neighbours", phase.neighbours.graph)})
    return steps


class _Wrapped:
    """A module with some functions replaced."""

    def __init__(self, module, replaced: dict):
        self._module, self._replaced = module, replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._module, name)


def rescore(n: int, args) -> dict:
    """The scoring of scale-N (`audit.score.triage.rescore`); its time."""
    import fiftyone as fo

    from audit.score.triage import rescore as score
    from audit.store import db

    db.ensure_database()
    dataset = fo.load_dataset(f"scale-{n}")
    start, cpu = time.perf_counter(), _cpu()
    summary = score(dataset)
    seconds = time.perf_counter() - start
    print(f"rescore of scale-{n}: {sum(summary.counts.values()):,} samples in {seconds:.0f} s", flush=True)
    return {"seconds": seconds, "cpu_seconds": _cpu() - cpu}


def _cpu() -> float:
    """CPU seconds of this process so far (its threads together; mongod's not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def recall() -> None:
    """recall@10 and the similarities of `approximate_nearest` against the exact search."""
    from audit.heads import neighbours

    real, labels, _, _ = real_embeddings()
    made, _ = synthetic(real, labels, 50_000, seed=1)
    chosen = (neighbours.INDEX, neighbours.REDUCED_DIMENSIONS, neighbours.CANDIDATES)
    for name, data in ((f"{len(real):,} real embeddings", real), ("50,000 made from them", made)):
        start = time.perf_counter()
        exact_rows, exact_similarity = neighbours.nearest(data, neighbours.K, exact=True)
        print(f"{name}: exact search {time.perf_counter() - start:.1f} s", flush=True)
        for index, dimensions, candidates in (chosen, ("hnsw", 128, neighbours.CANDIDATES), ("hnsw", None, 1),
                                              ("hnsw", neighbours.REDUCED_DIMENSIONS, 1), ("ivf", neighbours.REDUCED_DIMENSIONS,
                                                                                         neighbours.CANDIDATES)):
            neighbours.INDEX = index
            start = time.perf_counter()
            rows, similarity = neighbours.approximate_nearest(data, neighbours.K, dimensions=dimensions, candidates=candidates)
            seconds = time.perf_counter() - start
            neighbours.INDEX = chosen[0]
            found = np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(rows, exact_rows)])
            off = np.abs(similarity.mean(1) - exact_similarity.mean(1)).mean()
            twins = (similarity[:, 0] >= neighbours.DUPLICATE_SIMILARITY).sum()
            exact_twins = (exact_similarity[:, 0] >= neighbours.DUPLICATE_SIMILARITY).sum()
            print(f"{name}: {index}, {dimensions or data.shape[1]} dimensions, {candidates} x k candidates: recall@10 "
                  f"{found:.4f}; mean similarity off by {off:.4f}; nearest at or above the duplicate cosine {twins} "
                  f"(exact {exact_twins}); {seconds:.1f} s", flush=True)


def recall_at(n: int, queries: int = 1000) -> None:
    """recall@10 of the approximate neighbours of ``queries`` sampled rows among N made ones (float16,
    as the second phase holds them from HALF_PRECISION_FROM on), against their exact neighbours."""
    from audit.heads import neighbours

    real, labels, _, _ = real_embeddings(SCALE_SOURCES)
    data = np.empty((n, real.shape[1]), dtype=np.float16)
    for start in range(0, n, PAGE):
        data[start:start + PAGE] = synthetic(real, labels, n, start=start, stop=min(start + PAGE, n))[0]
    start = time.perf_counter()
    rows, _ = neighbours.approximate_nearest(data, neighbours.K)
    seconds = time.perf_counter() - start
    sampled = np.random.default_rng(SEED).choice(n, queries, replace=False)
    norms = np.concatenate([np.linalg.norm(data[s:s + PAGE].astype(np.float32), axis=1) for s in range(0, n, PAGE)])
    targets = data[sampled].astype(np.float32) / norms[sampled, None]
    cosine = np.empty((queries, n), dtype=np.float32)
    for s in range(0, n, PAGE):
        cosine[:, s:s + PAGE] = targets @ (data[s:s + PAGE].astype(np.float32) / norms[s:s + PAGE, None]).T
    cosine[np.arange(queries), sampled] = -np.inf
    exact = np.argpartition(-cosine, neighbours.K, axis=1)[:, :neighbours.K]
    found = np.mean([len(set(rows[q]) & set(e)) / neighbours.K for q, e in zip(sampled, exact)])
    print(f"{n:,} made embeddings: recall@10 {found:.4f} on {queries:,} sampled rows; approximate search {seconds:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    main()
