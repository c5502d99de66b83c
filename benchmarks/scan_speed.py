"""Scan throughput and memory on real JPEGs, against the speed of the model itself.

The 1000 ImageNet photos of ../shared/data/imagenet-samples (real sizes, 23 grayscale) are
replicated to N files (hard links, else copies, with distinct paths) in a temporary folder and
listed in a CSV. In one run, each in its own process (so that peak memory is measured cleanly):
  (a) a bare loop: decode + model forward, with the scan's DataLoader, workers, threads and model
      set-up (audit.scan.local.make_loader / model_runtime), no explanation, no database;
  (b) `audit scan` with default settings (audit.scan.run.scan, then the scoring, as the CLI runs them);
  (c) the same with class maps and second opinions off;
  (e) with --modes ...,e: `audit scan --models lite`, the three-model EfficientNet-Lite ensemble.
It prints images/s of each, the ratios b/a and c/a, the peak resident memory of each process
(and of its decoding workers), and the database write time as a share of the scan. Images/s
count the streaming loop only (model loading and ingest excluded; every mode the same way).
The database is a throwaway mongod of its own (tests/throwaway_db.py) in the temporary folder, never yours.

--memory runs (b) at 2,000 and 20,000 images (or --sizes) and prints the peak memory of each and
their ratio: the scan streams, so memory must not grow with the number of images beyond the
dataset's own documents.

(b) reports its second phase (`audit.scan.second_phase`: the neighbours' vote, FiftyOne Brain's index
and 2-D map; with a fitted head the fit, the scoring and the flagged samples' class maps) apart, as a
share of the scan.
--imagenette scans ../shared/data/imagenette (its 2,494 photos, its labels) instead of replicas.
--second-phase-memory runs the second phase alone over 5,000 and 50,000 samples (or --sizes)
replicated from a scan of 1,000 (their embeddings with a little noise, their signals), each in a
process of its own, and prints the peak memory of each and their ratio; with --head fit the copies
are labelled in ten classes of their own and the phase fits its heads.

--engine ray runs `audit scan` (defaults) three times over the same N images, each in a process
of its own: the local engine; Ray with one model actor (a local instance the run starts); Ray on
two loopback nodes (head 127.0.0.2, worker 127.0.0.3, `ray start`, 100 MB object stores) with two
actors. Each prints its start-up (until the first batch is written) apart from its steady-state
images/s (the batches after it), the summed memory (PSS) of every process of the run, and the
most the object store held spilled to disk at once.

Run (CPU timings mean something only on an otherwise idle machine; the load average is printed):
    .venv/bin/python benchmarks/scan_speed.py                   # N = 2000: a, b, c
    .venv/bin/python benchmarks/scan_speed.py --memory          # peak memory at 2,000 and 20,000
    .venv/bin/python benchmarks/scan_speed.py --engine ray      # local engine vs Ray, N = 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = REPO.parent / "shared" / "data" / "imagenet-samples"
IMAGENETTE = REPO.parent / "shared" / "data" / "imagenette" / "labels.csv"


def replicate(n: int, folder: Path) -> Path:
    """N distinct files (hard links to the sample photos, cycling) and a CSV filepath,label (the WordNet id)."""
    photos = sorted(SOURCE.glob("*.JPEG"))
    if not photos:
        sys.exit(f"no images in {SOURCE}")
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    table = folder / f"images-{n}.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "label"])
        for i in range(n):
            photo = photos[i % len(photos)]
            target = images / f"{i:07d}_{photo.name}"
            if not target.exists():
                try:
                    os.link(photo, target)
                except OSError:
                    shutil.copyfile(photo, target)
            writer.writerow([str(target), photo.name.split("_")[0]])
    return table


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


# --- the measured processes ----------------------------------------------------------------------


def child(mode: str, table: Path, name: str, batch_size: int | None, workers: int | None) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from audit.models.registry import PRESETS, load_model
    from audit.scan.kernel import model_runtime
    from audit.scan.local import make_loader
    from audit.scan.options import ScanOptions

    model = load_model("efficientnet_lite0", device="auto")
    models = [model] + [load_model(name, device="auto") for name in PRESETS["lite"][1:]] if mode == "e" else [model]
    options = ScanOptions(workers=workers)
    if batch_size:
        options.batch_size = batch_size
    if mode == "a":
        with open(table, newline="") as handle:
            paths = [row["filepath"] for row in csv.DictReader(handle)]
        with model_runtime(model, options) as n_workers, torch.inference_mode():
            threads = torch.get_num_threads()
            started, count = time.perf_counter(), 0
            for batch in make_loader(((str(i), p) for i, p in enumerate(paths)), [model], options.batch_size,
                                     n_workers):
                model.forward(batch["images"][0].to(model.device, non_blocking=True))
                count += len(batch["index"])
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        result = {"images": count, "seconds": seconds, "write_seconds": 0.0, "workers": n_workers,
                  "threads": threads}
    else:
        from audit.pipeline import audit_dataset
        from audit.scan.kernel import plan_resources
        from audit.store import db

        if mode == "c":
            options.class_maps = options.second_opinion = False
        summary = audit_dataset(db.load_dataset(name), models, options=options).scan  # scoring's memory counts too
        result = {"images": summary.scanned, "seconds": summary.seconds, "write_seconds": summary.write_seconds,
                  "second_phase_seconds": summary.second_phase_seconds,
                  "workers": plan_resources(model.device, options.workers)[0], "threads": torch.get_num_threads()}
    result.update(mode=mode, img_s=result["images"] / result["seconds"], peak_mb=peak_mb(resource.RUSAGE_SELF),
                  workers_peak_mb=peak_mb(resource.RUSAGE_CHILDREN), device=str(model.device),
                  batch_size=options.batch_size)
    return result


class BatchClock:
    """A progress sink (``add_task`` / ``advance``, as the scan calls a rich Progress) that notes when
    each batch of the first phase was written: start-up ends with the first, steady state follows."""

    def __init__(self):
        self.started, self.times, self.counts = time.perf_counter(), [], []

    def add_task(self, description, total=None):
        return description

    def advance(self, task, steps=1):
        if task == "scanning":
            self.times.append(time.perf_counter() - self.started)
            self.counts.append(steps)

    def figures(self) -> dict:
        """Start-up (s to the first written batch) and steady-state img/s (the batches after it)."""
        steady = (sum(self.counts) - self.counts[0]) / max(self.times[-1] - self.times[0], 1e-9)
        return {"startup_s": self.times[0], "steady_img_s": steady, "images": sum(self.counts)}


class MemorySampler:
    """The summed proportional set size (PSS: shared pages split between their processes, so the
    object store's shared memory counts once) of this process and ``others()`` (each process once),
    every half second; ``peak_mb`` is the largest sum seen and ``peak_parts`` its MB per kind of
    process (`process_kind`). With ``spill_folder`` (a Ray temporary folder), also the largest size
    of the objects Ray had spilled to disk there at once (``spilled_mb``)."""

    def __init__(self, others, spill_folder: str | None = None):
        import threading

        self.others, self.spill_folder, self.peak_mb, self.spilled_mb = others, spill_folder, 0.0, 0.0
        self.peak_parts: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            parts: dict[str, float] = {}
            for process in {p.pid: p for p in [psutil.Process(), *self.others()]}.values():
                try:
                    kind = "driver" if process.pid == os.getpid() else process_kind(process.cmdline())
                    parts[kind] = parts.get(kind, 0.0) + process.memory_full_info().pss / 2**20
                except psutil.Error:
                    pass
            if sum(parts.values()) > self.peak_mb:
                self.peak_mb, self.peak_parts = sum(parts.values()), parts
            if self.spill_folder:
                spilled = sum(path.stat().st_size for path in Path(self.spill_folder).rglob("ray_spilled_objects*/*")
                              if path.is_file())
                self.spilled_mb = max(self.spilled_mb, spilled / 2**20)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc):
        self._stop.set()
        self._thread.join()


def process_kind(cmdline: list[str]) -> str:
    """What a process is, for the memory breakdown: a Ray worker by its title (``ray::IDLE`` is a
    pooled worker, the read tasks' decoders among them), else its program's name."""
    title = " ".join(cmdline)
    if title.startswith("ray::"):
        return title.split()[0].split("(")[0].split(".")[0]
    program = next((Path(part).name for part in cmdline if part.endswith(".py")), Path(cmdline[0]).name if cmdline else "?")
    return program


def child_engine(engine: str, table: Path, name: str, batch_size: int | None, address: str | None,
                 actors: int | None, ray_folder: str | None) -> dict:
    """`audit scan` (defaults) on ``engine``: local, or Ray (a local instance of its own started in
    ``ray_folder``, or the cluster at ``address``), timed per written batch, memory summed over
    every process of the run, and the object store's spilled bytes."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from ray_support import LoopbackCluster

    from audit.models.registry import load_model
    from audit.pipeline import audit_dataset
    from audit.scan.options import ClusterOptions, ScanOptions
    from audit.store import db

    model = load_model("efficientnet_lite0", device="auto")
    options = ScanOptions(engine="ray" if engine != "local" else "local",
                          cluster=ClusterOptions(address=address, actors=actors))
    if batch_size:
        options.batch_size = batch_size
    clock = BatchClock()
    import psutil

    cluster = LoopbackCluster.attach(ray_folder) if ray_folder else None
    def others() -> list:  # the database service and mongod this process started; the cluster's processes
        return psutil.Process().children(recursive=True) + (cluster.processes() if cluster else [])

    with MemorySampler(others, spill_folder=ray_folder) as memory:
        if engine != "local":  # started (or joined) here, not by the scan: its start-up counts as the scan's
            import ray

            ray.init(address=address, log_to_driver=False,
                     **({} if address else {"num_cpus": os.cpu_count(), "include_dashboard": False, "_temp_dir": ray_folder}))
        summary = audit_dataset(db.load_dataset(name), [model], options=options, progress=clock).scan
        if engine != "local":
            ray.shutdown()
    return {**clock.figures(), "engine": engine, "seconds": summary.seconds, "peak_mb": memory.peak_mb,
            "peak_parts": memory.peak_parts, "spilled_mb": memory.spilled_mb,
            "second_phase_seconds": summary.second_phase_seconds}


def grow(base: str, name: str, n: int, own_classes: bool = False) -> None:
    """A dataset of ``n`` samples, each a copy of one of ``base``'s (cycling) with its embedding
    jittered: as if ``n`` photos had been through the first phase. With ``own_classes``, labelled in
    ten classes of its own (``group-<class index mod 10>``), for a fitted head."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from audit import names
    from audit.store import db

    source = db.load_dataset(base)
    columns = source.exists(names.EMBEDDINGS).values(["filepath", f"{names.GROUND_TRUTH}.label", names.EMBEDDINGS,
                                                      names.SIGNALS, names.DONE])
    rows = list(zip(*columns))
    if db.fo.dataset_exists(name):
        db.delete_dataset(name)
    dataset = db.fo.Dataset(name, persistent=True)
    dataset.info = {"audit": db.audit_info(source)}
    dataset.save()
    db.declare_audit_fields(dataset)
    rng = np.random.default_rng(0)
    for start in range(0, n, 5000):
        batch = []
        for i in range(start, min(n, start + 5000)):
            filepath, label, embedding, signals, done = rows[i % len(rows)]
            if own_classes:
                label = f"group-{(i % len(rows)) % 10}"
            jitter = embedding * (1 + 0.05 * rng.standard_normal(embedding.shape).astype(np.float32))
            batch.append(db.fo.Sample(filepath=filepath, ground_truth=db.fo.Classification(label=label),
                                      **{names.EMBEDDINGS: jitter, names.SIGNALS: signals, names.DONE: done}))
        dataset.add_samples(batch, progress=False)


def second_phase_alone(name: str, head: str) -> dict:
    """The second phase over dataset ``name`` (with a fitted head: the fit, the vote and the indexes)."""
    sys.path.insert(0, str(REPO))
    from audit.heads.choice import choose_head
    from audit.models.registry import load_model
    from audit.scan import second_phase
    from audit.store import db

    dataset = db.load_dataset(name)
    model = load_model("efficientnet_lite0", device="auto")
    key = db.audit_info(dataset)["scan"]["key"]
    started = time.perf_counter()
    done = second_phase.run(dataset, [model], key, choose_head(dataset, model, head))
    return {"judged": done.judged, "seconds": time.perf_counter() - started, "peak_mb": peak_mb(resource.RUSAGE_SELF)}


def ingest(table: Path, name: str) -> None:
    sys.path.insert(0, str(REPO))
    from audit.pipeline import SourceRequest, load_source

    load_source(SourceRequest("csv", str(table), name), warn=lambda _message: None)


# --- the driver ----------------------------------------------------------------------------------


def run_child(args: list[str], env: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"benchmark step {args[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(mode: str, n: int, folder: Path, env: dict, options: argparse.Namespace, suffix: str = "") -> dict:
    table = IMAGENETTE if options.imagenette else replicate(n, folder)
    name = f"bench-{mode}-{n}{suffix}"
    if mode != "a":
        run_child(["--ingest", str(table), "--name", name], env)
    extra = [*(["--batch-size", str(options.batch_size)] if options.batch_size else []),
             *(["--workers", str(options.workers)] if options.workers is not None else [])]
    return run_child(["--child", mode, str(table), "--name", name, *extra], env)


def compare_engines(n: int, folder: Path, env: dict, options: argparse.Namespace) -> None:
    """--engine ray: the local engine, Ray with one model actor (a local instance), and Ray on two
    loopback nodes with two actors, over the same images, each run in a process of its own."""
    sys.path.insert(0, str(REPO / "tests"))
    from ray_support import LoopbackCluster

    table = replicate(n, folder)
    extra = ["--batch-size", str(options.batch_size)] if options.batch_size else []
    rows = []
    for engine in ("local", "ray-local", "ray-cluster"):
        name = f"bench-engine-{engine}-{n}"
        run_child(["--ingest", str(table), "--name", name], env)
        if engine == "ray-cluster":
            cluster = LoopbackCluster()
            cluster.start()
            try:
                rows.append(run_child(["--engine-child", engine, str(table), "--name", name, "--address", cluster.address,
                                       "--actors", "2", "--ray-folder", cluster.folder, *extra], cluster.env))
            finally:
                cluster.stop()
        else:
            ray_folder = ["--ray-folder", tempfile.mkdtemp(prefix="ray-", dir="/tmp")] if engine == "ray-local" else []
            rows.append(run_child(["--engine-child", engine, str(table), "--name", name, "--actors", "1", *ray_folder,
                                   *extra], env))
    labels = {"local": "local engine", "ray-local": "Ray, 1 model actor (local instance)",
              "ray-cluster": "Ray, 2 loopback nodes, 2 model actors"}
    print(f"N = {n}, {os.cpu_count()} cores; start-up = until the first batch is written (Ray: its start or "
          "connection, the actors loading the model)")
    print(f"{'':40} {'start-up s':>10} {'steady img/s':>12} {'vs local':>8} {'peak MB':>8} {'spilled MB':>10}")
    for row in rows:
        print(f"{labels[row['engine']]:40} {row['startup_s']:>10.1f} {row['steady_img_s']:>12.1f} "
              f"{row['steady_img_s'] / rows[0]['steady_img_s']:>8.3f} {row['peak_mb']:>8.0f} {row['spilled_mb']:>10.0f}")
    print("peak MB: the summed PSS of the driver and every process it or the cluster ran (decoders, raylets, actors); "
          "spilled MB: the most Ray held spilled to disk at once")
    for row in rows:
        parts = sorted(row["peak_parts"].items(), key=lambda item: -item[1])
        print(f"  at the peak, {labels[row['engine']]}: " + ", ".join(f"{kind} {mb:.0f}" for kind, mb in parts if mb >= 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    parser.add_argument("--modes", default="a,c,b", help="which of a, b, c, in this order (default a,c,b)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the best of each mode is shown")
    parser.add_argument("--memory", action="store_true", help="peak memory of (b) at --sizes")
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--keep", help="use (and keep) this folder instead of a temporary one")
    parser.add_argument("--imagenette", action="store_true", help="scan imagenette's photos and labels")
    parser.add_argument("--second-phase-memory", action="store_true",
                        help="peak memory of the second phase alone at --sizes (default 5000,50000)")
    parser.add_argument("--head", default="model", choices=("model", "fit"),
                        help="--second-phase-memory: the model's head (default), or a head fitted on ten classes")
    parser.add_argument("--grow", nargs=4, metavar=("BASE", "NAME", "N", "HEAD"), help=argparse.SUPPRESS)
    parser.add_argument("--phase2", nargs=2, metavar=("NAME", "HEAD"), help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: the local engine against Ray with 1 actor and Ray on 2 loopback nodes")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CSV"), help=argparse.SUPPRESS)
    parser.add_argument("--engine-child", nargs=2, metavar=("ENGINE", "CSV"), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ray-folder", help=argparse.SUPPRESS)
    parser.add_argument("--ingest", metavar="CSV", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.child:
        result = child(options.child[0], Path(options.child[1]), options.name, options.batch_size, options.workers)
        print(json.dumps(result))
        return
    if options.engine_child:
        print(json.dumps(child_engine(options.engine_child[0], Path(options.engine_child[1]), options.name,
                                      options.batch_size, options.address, options.actors, options.ray_folder)))
        return
    if options.ingest:
        ingest(Path(options.ingest), options.name)
        print("{}")
        return
    if options.grow:
        grow(options.grow[0], options.grow[1], int(options.grow[2]), own_classes=options.grow[3] == "fit")
        print("{}")
        return
    if options.phase2:
        print(json.dumps(second_phase_alone(*options.phase2)))
        return

    folder = Path(options.keep) if options.keep else Path(tempfile.mkdtemp(prefix="audit-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "tests"))
    from throwaway_db import start_throwaway_database

    start_throwaway_database(folder / "db")  # FIFTYONE_DATABASE_URI for the children: never your database
    env = dict(os.environ)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start; data in {folder}")
    try:
        if options.engine == "ray":
            compare_engines(options.n, folder, env, options)
        elif options.second_phase_memory:
            sizes = [int(s) for s in (options.sizes if options.sizes != "2000,20000" else "5000,50000").split(",")]
            measure("b", 1000, folder, env, options, suffix="-base")
            rows = []
            for n in sizes:
                run_child(["--grow", "bench-b-1000-base", f"bench-phase2-{n}", str(n), options.head], env)
                rows.append(run_child(["--phase2", f"bench-phase2-{n}", options.head], env))
            print(f"{'samples':>8} {'seconds':>8} {'peak MB':>8}")
            for n, row in zip(sizes, rows):
                print(f"{n:>8} {row['seconds']:>8.1f} {row['peak_mb']:>8.0f}")
            print(f"head: {options.head}")
            print(f"second phase peak memory at {sizes[-1]} / at {sizes[0]}: {rows[-1]['peak_mb'] / rows[0]['peak_mb']:.3f}")
        elif options.memory:
            sizes = [int(s) for s in options.sizes.split(",")]
            rows = [measure("b", n, folder, env, options) for n in sizes]
            print(f"{'images':>8} {'img/s':>7} {'peak MB':>8} {'workers':>8}")
            for n, row in zip(sizes, rows):
                print(f"{n:>8} {row['img_s']:>7.1f} {row['peak_mb']:>8.0f} {row['workers_peak_mb']:>8.0f}")
            print(f"peak memory (scan and scoring) at {sizes[-1]} / at {sizes[0]}: "
                  f"{rows[-1]['peak_mb'] / rows[0]['peak_mb']:.3f}")
        else:
            modes = options.modes.split(",")
            runs = {mode: [] for mode in modes}
            for round_ in range(options.rounds):  # interleaved, so that a busy spell hits every mode alike
                for mode in modes:
                    runs[mode].append(measure(mode, options.n, folder, env, options, suffix=f"-{round_}"))
            results = {mode: max(rows, key=lambda row: row["img_s"]) for mode, rows in runs.items()}
            first = next(iter(results.values()))
            images = f"imagenette, N = {first['images']}" if options.imagenette else f"N = {options.n}"
            print(f"{images}, device {first['device']}, batch {first['batch_size']}, "
                  f"{first['workers']} decoding worker(s), {first['threads']} torch thread(s)"
                  + (f"; best of {options.rounds} interleaved rounds" if options.rounds > 1 else ""))
            labels = {"a": "bare loop: decode + forward", "b": "audit scan (defaults)",
                      "c": "audit scan, no class maps / second opinions", "e": "audit scan --models lite (3 models)"}
            print(f"{'':4}{'':46} {'img/s':>7} {'peak MB':>8} {'workers MB':>10} {'DB write':>9}")
            for mode, row in results.items():
                share = f"{100 * row['write_seconds'] / row['seconds']:.1f} %" if mode != "a" else ""
                values = ", ".join(f"{r['img_s']:.1f}" for r in runs[mode])
                every = f"  (rounds: {values})" if options.rounds > 1 else ""
                print(f"({mode}) {labels[mode]:46} {row['img_s']:>7.1f} {row['peak_mb']:>8.0f} "
                      f"{row['workers_peak_mb']:>10.0f} {share:>9}{every}")
            for mode in ("c", "b"):
                if mode in results and "a" in results:
                    print(f"{mode}/a = {results[mode]['img_s'] / results['a']['img_s']:.3f}")
            if "b" in results:
                b = results["b"]
                print(f"(b)'s second phase: {b['second_phase_seconds']:.1f} s, "
                      f"{100 * b['second_phase_seconds'] / b['seconds']:.1f} % of its first phase ({b['seconds']:.1f} s)")
            if "e" in results and "b" in results:
                print(f"e/b = {results['e']['img_s'] / results['b']['img_s']:.3f} (the ensemble against Lite0 alone)")
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
