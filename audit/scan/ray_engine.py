"""The scan's compute on a Ray cluster (``audit scan --engine ray``): Ray Data schedules decoders on
every node's CPUs and one model replica per GPU (or per node on CPUs), restarts what dies and
retries the lost batches. The driver (`audit.scan.run.scan`) keeps everything else: ingest, the scan
lock, the settings key, the pending samples, the database writes, the second phase's fit, rescoring.

The flow of one phase: the driver reads the pending samples from MongoDB a page at a time and
hands Ray only chunk bounds (the first and last ``_id`` of a batch of them). A read task per
chunk reads its rows from MongoDB itself (the URI is passed explicitly), decodes the images and
sends the models' inputs as 8-bit pixels (`audit.scan.ray_tasks`: no torch or FiftyOne in those
processes). `ModelActor` loads the models once, runs the scan's evidence code
(`audit.scan.kernel.batch_fields`: forward pass, Eigen-CAM, class maps, boxes, second opinions), writes
the map files (atomically, into the map folder every node sees at the same path) and returns only
each sample's id and its fields, pickled. The driver writes them with the scan's
`audit.scan.kernel.BulkWriter` (fields first, the done marker last): a retried batch rewrites the same
values, a killed driver leaves nothing marked done that is not complete.

Nothing stateful is pickled: no dataset, no connection. Before a scan, a probe task on each node
checks that it sees the map folder and reaches the database (`check_nodes`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from audit import names
from audit.errors import AuditError
from audit.models.registry import AuditModel, load_model
from audit.scan.evidence import EvidenceOptions
from audit.scan.kernel import WithFoldHead, batch_fields, fast_memory_format, fold_fields, model_runtime, write_map
from audit.scan.ray_tasks import ItemsChunk, MongoChunk, Source, probe, read_chunk
from audit.store import db

RAY_MISSING = "--engine ray needs Ray: pip install 'audit[ray]' (or pip install 'ray[data]>=2.50')"
PROBE_TIMEOUT_SECONDS = 60.0


class ClusterError(AuditError):
    """The cluster cannot run the scan (Ray missing, a node that does not see the shared storage)."""


def import_ray():
    """Ray and Ray Data, or one line saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class ModelSpec:
    """What a node needs to load the same model: the name, the weights file (used where that path
    exists on the node; else the model's own source), the layer, and the settings to check it by."""

    name: str
    weights: str
    layer: str
    settings: dict

    @classmethod
    def of(cls, model: AuditModel) -> "ModelSpec":
        return cls(model.name, model.weights, model.target_layer, model.settings())

    def load(self, device: str) -> AuditModel:
        weights = self.weights if Path(self.weights).is_file() else None
        model = load_model(self.name, weights=weights, layer=self.layer, device=device)
        if model.settings() != self.settings:
            raise ClusterError(f"node {socket.gethostname()} loads other weights for {self.name} "
                               f"({model.weights}) than the driver ({self.weights}): install the same ones on every node")
        return model


# --- reading and decoding: Ray Data read tasks (`audit.scan.ray_tasks`) ----------------------------------


def _datasource(chunks: list, source: Source):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class PendingChunks(Datasource):
        def estimate_inmemory_data_size(self):
            return sum(chunk.count for chunk in chunks) * sum(3 * r.crop * r.crop for r in source.recipes)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            # One batch per read task. A read task skips the samples written since it was planned, so a
            # retry may return fewer rows than the first try; Ray retries a task that yields several
            # blocks by skipping the blocks the first try delivered, which would then skip samples never
            # delivered. With one block per task, a retry after delivery is dropped whole.
            # A task is a function of this light module, pickled by reference: its process imports
            # no torch or FiftyOne.
            return [ReadTask(partial(read_chunk, chunk, source), BlockMetadata(chunk.count, None, None, None))
                    for chunk in chunks]

    return PendingChunks()


# --- the model replicas ------------------------------------------------------------------------------


class ModelActor:
    """One model replica (per GPU, or per node on CPUs): loads the models once and turns a decoded
    batch into each sample's fields, writing its map files; ``fold_heads`` (the first model's fitted
    fold head and the dataset's classes) makes it examine top-ranked samples (`audit.scan.kernel.fold_fields`)."""

    def __init__(self, specs: list[ModelSpec], device: str, options, evidence_options, out_dir: str,
                 label_set_indices=None, fold_heads=None):
        self.models = [spec.load(device) for spec in specs]
        for model in self.models:  # the replica's CPU threads: Ray sets OMP_NUM_THREADS to 1 for its workers
            model_runtime(model, options).__enter__()
        if device == "cpu":
            torch.set_num_threads(options.threads or len(os.sched_getaffinity(0)))
        if fold_heads is not None:
            self.models = [WithFoldHead(model, head, classes) for model, (head, classes) in zip(self.models, fold_heads)]
        self.fold = fold_heads is not None
        self.evidence_options, self.out_dir = evidence_options, Path(out_dir)
        self.label_set_indices = label_set_indices

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self._batch(columns)
        labels = [json.loads(label) for label in columns["label"]]
        if self.fold:
            rows = fold_fields(self.models, batch, labels, self.evidence_options.box_threshold)
        else:
            rows = batch_fields(self.models, batch, labels, self.evidence_options, self.out_dir,
                                self.label_set_indices, _save_map)
        return {"id": np.array([sample_id for sample_id, _, _ in rows], dtype=object),
                "fields": np.array([pickle.dumps(fields) for _, fields, _ in rows], dtype=object)}

    def _batch(self, columns: dict[str, np.ndarray]) -> dict:
        images = []
        for index, model in enumerate(self.models):
            pixels = torch.from_numpy(np.ascontiguousarray(columns[f"pixels{index}"]))
            tensor = model.preprocess.normalise(pixels)
            if fast_memory_format(model.device):
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            images.append(tensor)
        return {"index": list(columns["id"]), "filepath": list(columns["filepath"]), "images": images,
                "width": torch.from_numpy(columns["width"]), "height": torch.from_numpy(columns["height"]),
                "error": list(columns["error"]), "gt_boxes": [json.loads(b) for b in columns["boxes"]]}


def _save_map(path: Path, heatmap) -> list:
    """Write a map file now (in the actor): nothing is left pending for the driver."""
    if not write_map(path, heatmap):
        raise OSError(f"could not write the map file {path}")
    return []


# --- the engine ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorPlan:
    """How many model replicas, with which resources each."""

    actors: int
    gpus: float
    device: str

    def describe(self) -> str:
        per = f"{self.gpus:g} GPU each" if self.gpus else "CPU"
        return f"{self.actors} model actor{'s' if self.actors != 1 else ''} ({per})"


def plan_actors(resources: dict, nodes: int, actors: int | None, gpus_per_actor: float | None) -> ActorPlan:
    """One actor per ``gpus_per_actor`` GPUs of the cluster (1 when not said), or on a cluster
    without GPUs (or ``gpus_per_actor`` 0) one per node; ``actors`` overrides the count."""
    gpus = float(resources.get("GPU", 0))
    per = (1.0 if gpus else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
    if per > gpus > 0 or (per and not gpus):
        raise ClusterError(f"--gpus-per-actor {per:g} asks for more GPUs than the cluster has ({gpus:g})")
    count = actors or (int(gpus // per) if per else max(1, nodes))
    return ActorPlan(count, per, "cuda" if per else "cpu")


class RayEngine:
    """The scan on Ray (see the module). A context: connects to the cluster (or starts a local
    instance when none is running and no address is given), checks every node, and disconnects."""

    # Ray retries what fails; should a sample still not come back (the driver counts them), the
    # scan reads what is left undone and runs it again, up to this many passes in all.
    passes = 3

    def __init__(self, models: list[AuditModel], options, out_dir: Path):
        self.specs = [ModelSpec.of(model) for model in models]
        self.options, self.out_dir = options, out_dir
        self.recipes = tuple(model.preprocess.recipe for model in models)
        self.started = False

    def __enter__(self) -> "RayEngine":
        ray = import_ray()
        if not ray.is_initialized():
            address = self.options.cluster.address
            try:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                         **({} if address else {"include_dashboard": False}))
            except ConnectionError as error:
                raise ClusterError(f"cannot reach the Ray cluster at {address or 'RAY_ADDRESS'}: "
                                   f"{str(error).splitlines()[0]}") from None
            self.started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the scan's own bar counts what is written
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"
        alive = [node for node in ray.nodes() if node.get("Alive")]
        self.plan = plan_actors(ray.cluster_resources(), len(alive), self.options.cluster.actors,
                                self.options.cluster.gpus_per_actor)
        self.uri, self.database = db.database_address()
        check_nodes(ray, alive, self.out_dir, self.uri)
        return self

    def __exit__(self, *_exc) -> None:
        if self.started:
            import ray

            ray.shutdown()

    def first_phase(self, pending, models, options, evidence_options, label_set_indices, out_dir: Path) -> Iterator[list]:
        """Per result batch, (sample id, fields, []) rows: the map files are written already."""
        root = pending.collection._root_dataset
        chunks = list(_mongo_chunks(pending, options.batch_size))
        if not chunks:
            return
        source = Source(self.uri, self.database, root._sample_collection_name, db.label_field(root), names.GT_BOXES,
                        names.DONE, pending.key, pending.box_field is not None, self.recipes)
        yield from self._run(chunks, source, dict(label_set_indices=label_set_indices), evidence_options,
                             options.batch_size)

    def examine(self, heads: dict, items: list[tuple], box_threshold: float, batch_size: int) -> Iterator[list]:
        """Top-ranked samples (``items``: (id, filepath, label, fold)) through their fold's head
        (``heads``: fold -> `audit.scan.kernel.WithFoldHead`; `audit.scan.top_ranked`), on the
        actors, a fold at a time."""
        source = Source(self.uri, self.database, "", "", "", "", "", True, self.recipes[:1])
        options = EvidenceOptions(box_threshold=box_threshold, class_maps=True, second_opinion=False)
        for fold, head in heads.items():
            mine = [(sample_id, filepath, label, None) for sample_id, filepath, label, of in items if of == fold]
            chunks = [ItemsChunk(tuple(mine[start:start + batch_size]), len(mine[start:start + batch_size]))
                      for start in range(0, len(mine), batch_size)]
            if chunks:
                yield from self._run(chunks, source, dict(fold_heads=[(head.fold_head, head.classes)]), options, batch_size)

    def _run(self, chunks: list, source: Source, actor_kwargs: dict, evidence_options, batch_size: int) -> Iterator[list]:
        import ray

        plan = self.plan
        dataset = ray.data.read_datasource(_datasource(chunks, source)).map_batches(
            ModelActor, batch_size=batch_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=min(plan.actors, len(chunks))),
            fn_constructor_kwargs=dict(specs=self.specs, device=plan.device, options=self.options,
                                       evidence_options=evidence_options, out_dir=str(self.out_dir), **actor_kwargs),
            num_gpus=plan.gpus or None)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield [(sample_id, pickle.loads(fields), []) for sample_id, fields in zip(batch["id"], batch["fields"])]


def _mongo_chunks(pending, size: int) -> Iterator[MongoChunk]:
    """The pending samples (`audit.scan.pending.PendingSamples`, read a page at a time, their stale markers
    cleared) as chunks of ``size`` consecutive ids: only the bounds are kept."""
    first, last, count = None, None, 0
    for page in pending.pages():
        for row in page:
            first, last, count = first or row[0], row[0], count + 1
            if count == size:
                yield MongoChunk(first, last, count)
                first, count = None, 0
    if count:
        yield MongoChunk(first, last, count)


# --- shared state -------------------------------------------------------------------------------------


def check_nodes(ray, nodes: list[dict], out_dir: Path, uri: str) -> None:
    """A probe task on every node: it must see the map folder at the same path (a file the driver
    wrote there, and the driver sees the file it writes) and reach the database. One line otherwise."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    mine = out_dir / f".probe-{token}"
    mine.write_text(token)
    try:
        probes = {node["NodeManagerAddress"]: ray.remote(num_cpus=0)(probe).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                str(out_dir), token, uri, db.redacted(uri))
            for node in nodes}
        for address, reference in probes.items():
            problem = ray.get(reference, timeout=PROBE_TIMEOUT_SECONDS)
            theirs = out_dir / f".probe-{token}-{address}"
            if not problem and not theirs.exists():
                problem = f"the file it wrote into {out_dir} is not seen here: the map folder must be shared storage"
            theirs.unlink(missing_ok=True)
            if problem:
                raise ClusterError(f"node {address}: {problem}")
    finally:
        mine.unlink(missing_ok=True)
