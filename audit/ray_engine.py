"""The scan's compute on a Ray cluster (``audit scan --engine ray``): Ray Data schedules decoders on
every node's CPUs and one model replica per GPU (or per node on CPUs), restarts what dies and
retries the lost batches. The driver (`audit.scan.scan`) keeps everything else: ingest, the scan
lock, the settings key, the pending samples, the database writes, the second phase's fit, rescoring.

The flow of one phase: the driver reads the pending samples from MongoDB a page at a time and
hands Ray only chunk bounds (the first and last ``_id`` of a batch of them). A read task per
chunk reads its rows from MongoDB itself (the URI is passed explicitly), decodes the images and
sends the models' inputs as 8-bit pixels. `ModelActor` loads the models once, runs the scan's
evidence code (`audit.scan.batch_fields`: forward pass, Eigen-CAM, class maps, boxes, second
opinions), writes the map files (atomically, into the map folder every node sees at the same path)
and returns only each sample's id and its fields, pickled. The driver writes them with the scan's
`audit.scan.BulkWriter` (fields first, the done marker last): a retried batch rewrites the same
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
from pathlib import Path

import numpy as np
import torch

from audit import db, names
from audit.errors import AuditError
from audit.images import open_rgb, unreadable_reason
from audit.models.preprocess import Preprocess
from audit.models.registry import AuditModel

RAY_MISSING = "--engine ray needs Ray: pip install 'audit[ray]' (or pip install 'ray[data]>=2.50')"
# One batch per read task. A read task skips the samples written since it was planned, so a retry
# may return fewer rows than the first try; Ray retries a task that yields several blocks by
# skipping the blocks the first try delivered, which would then skip samples never delivered.
# With one block per task, a retry after delivery is dropped whole, before delivery it is all new.
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
        from audit.models.registry import load_model

        weights = self.weights if Path(self.weights).is_file() else None
        model = load_model(self.name, weights=weights, layer=self.layer, device=device)
        if model.settings() != self.settings:
            raise ClusterError(f"node {socket.gethostname()} loads other weights for {self.name} "
                               f"({model.weights}) than the driver ({self.weights}): install the same ones on every node")
        return model


# --- reading and decoding: Ray Data read tasks ------------------------------------------------------


@dataclass(frozen=True)
class MongoChunk:
    """Pending samples with ``first <= _id <= last`` and no done marker of ``key``, read from the
    database by the task (a retried task skips what was written meanwhile)."""

    first: str
    last: str
    count: int

    def rows(self, source: "Source") -> list[tuple]:
        import pymongo
        from bson import ObjectId

        client = pymongo.MongoClient(source.uri, serverSelectionTimeoutMS=30_000)
        try:
            collection = client[source.database][source.collection]
            query = {"_id": {"$gte": ObjectId(self.first), "$lte": ObjectId(self.last)},
                     source.marker: {"$ne": source.key}}
            projection = {"filepath": 1, source.label_field: 1, f"{source.box_field}.detections.bounding_box": 1}
            documents = list(collection.find(query, projection).sort("_id", 1))
        finally:
            client.close()
        return [(str(doc["_id"]), doc["filepath"], (doc.get(source.label_field) or {}).get("label"),
                 _boxes(doc.get(source.box_field)) if source.boxes else None) for doc in documents]


def _boxes(value: dict | None) -> list | None:
    boxes = [d.get("bounding_box") for d in (value or {}).get("detections") or []]
    return [b for b in boxes if b] or None


@dataclass(frozen=True)
class ItemsChunk:
    """Samples given by the driver: (id, filepath, label, boxes) rows (the second phase's few)."""

    items: tuple
    count: int

    def rows(self, _source: "Source") -> list[tuple]:
        return list(self.items)


@dataclass(frozen=True)
class Source:
    """Where the read tasks find the samples, and how they decode them for the models."""

    uri: str
    database: str
    collection: str
    label_field: str
    box_field: str
    marker: str
    key: str
    boxes: bool  # read the ground-truth boxes (for second opinions)
    preprocesses: tuple[Preprocess, ...]
    batch_size: int


def decode_rows(rows: list[tuple], preprocesses: tuple[Preprocess, ...]) -> dict[str, np.ndarray]:
    """A batch of rows -> columns: the ids, file paths, labels and boxes (JSON), the decoded size,
    the error ("" when readable) and per model its input as (3, crop, crop) uint8 pixels."""
    min_side = max(p.resize_short for p in preprocesses)
    pixels = [np.zeros((len(rows), 3, p.crop, p.crop), np.uint8) for p in preprocesses]
    widths, heights, errors = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64), []
    for row, (_id, filepath, _label, _boxes) in enumerate(rows):
        try:
            image = open_rgb(filepath, min_side)
            for index, preprocess in enumerate(preprocesses):
                pixels[index][row] = preprocess.pixels(image).numpy()
            widths[row], heights[row] = image.width, image.height
            errors.append("")
        except Exception as error:
            errors.append(unreadable_reason(error))
    columns = {"id": np.array([r[0] for r in rows], dtype=object), "filepath": np.array([r[1] for r in rows], dtype=object),
               "label": np.array([json.dumps(r[2]) for r in rows], dtype=object),
               "boxes": np.array([json.dumps(r[3]) for r in rows], dtype=object),
               "width": widths, "height": heights, "error": np.array(errors, dtype=object)}
    columns.update({f"pixels{index}": array for index, array in enumerate(pixels)})
    return columns


def _datasource(chunks: list, source: Source):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockAccessor, BlockMetadata

    def read(chunk) -> list:
        rows = chunk.rows(source)
        return [BlockAccessor.batch_to_block(decode_rows(rows, source.preprocesses))] if rows else []

    class PendingChunks(Datasource):
        def estimate_inmemory_data_size(self):
            return sum(chunk.count for chunk in chunks) * sum(3 * p.crop * p.crop for p in source.preprocesses)

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(lambda chunk=chunk: read(chunk), BlockMetadata(chunk.count, None, None, None))
                    for chunk in chunks]

    return PendingChunks()


# --- the model replicas ------------------------------------------------------------------------------


class ModelActor:
    """One model replica (per GPU, or per node on CPUs): loads the models once and turns a decoded
    batch into each sample's fields, writing its map files; ``fold_heads`` (per model, a fitted
    fold head and the dataset's classes) makes it the second phase's (`audit.second_phase.fold_fields`)."""

    def __init__(self, specs: list[ModelSpec], device: str, options, evidence_options, out_dir: str,
                 label_set_indices=None, fold_heads=None):
        from audit.scan import model_runtime

        self.models = [spec.load(device) for spec in specs]
        for model in self.models:  # the replica's CPU threads: Ray sets OMP_NUM_THREADS to 1 for its workers
            model_runtime(model, options).__enter__()
        if device == "cpu":
            torch.set_num_threads(options.threads or len(os.sched_getaffinity(0)))
        if fold_heads is not None:
            from audit.second_phase import WithFoldHead

            self.models = [WithFoldHead(model, head, classes) for model, (head, classes) in zip(self.models, fold_heads)]
        self.fold = fold_heads is not None
        self.evidence_options, self.out_dir = evidence_options, Path(out_dir)
        self.label_set_indices = label_set_indices

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from audit.scan import batch_fields
        from audit.second_phase import fold_fields

        batch = self._batch(columns)
        labels = [json.loads(label) for label in columns["label"]]
        if self.fold:
            rows = fold_fields(self.models, batch, labels, self.evidence_options, self.out_dir, _save_map)
        else:
            rows = batch_fields(self.models, batch, labels, self.evidence_options, self.out_dir,
                                self.label_set_indices, _save_map)
        return {"id": np.array([sample_id for sample_id, _, _ in rows], dtype=object),
                "fields": np.array([pickle.dumps(fields) for _, fields, _ in rows], dtype=object)}

    def _batch(self, columns: dict[str, np.ndarray]) -> dict:
        from audit.scan import fast_memory_format

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
    from audit.scan import write_map

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
        self.preprocesses = tuple(model.preprocess for model in models)
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
                        names.DONE, pending.key, pending.box_field is not None, self.preprocesses, options.batch_size)
        yield from self._run(chunks, source, dict(label_set_indices=label_set_indices), evidence_options)

    def classify_again(self, heads, items: list[tuple], evidence_options, batch_size: int, out_dir: Path) -> Iterator[list]:
        """The second phase's samples in doubt of one fold through its heads, on the actors."""
        chunks = [ItemsChunk(tuple(items[start:start + batch_size]), len(items[start:start + batch_size]))
                  for start in range(0, len(items), batch_size)]
        source = Source(self.uri, self.database, "", "", "", "", "", True, self.preprocesses, batch_size)
        fold_heads = [(head.fold_head, head.classes) for head in heads]
        yield from self._run(chunks, source, dict(fold_heads=fold_heads), evidence_options)

    def _run(self, chunks: list, source: Source, actor_kwargs: dict, evidence_options) -> Iterator[list]:
        import ray

        plan = self.plan
        dataset = ray.data.read_datasource(_datasource(chunks, source)).map_batches(
            ModelActor, batch_size=source.batch_size, batch_format="numpy", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=min(plan.actors, len(chunks))),
            fn_constructor_kwargs=dict(specs=self.specs, device=plan.device, options=self.options,
                                       evidence_options=evidence_options, out_dir=str(self.out_dir), **actor_kwargs),
            num_gpus=plan.gpus or None)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield [(sample_id, pickle.loads(fields), []) for sample_id, fields in zip(batch["id"], batch["fields"])]


def _mongo_chunks(pending, size: int) -> Iterator[MongoChunk]:
    """The pending samples (`audit.scan.PendingSamples`, read a page at a time, their stale markers
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
        probes = {node["NodeManagerAddress"]: ray.remote(num_cpus=0)(_probe).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(out_dir), token, uri)
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


def _probe(out_dir: str, token: str, uri: str) -> str:
    """On one node: what keeps it from scanning ("" when nothing)."""
    import pymongo

    folder = Path(out_dir)
    try:
        if (folder / f".probe-{token}").read_text() != token:
            raise OSError
    except OSError:
        return f"does not see the map folder {out_dir} (it must be shared storage, mounted at the same path)"
    from ray.util import get_node_ip_address

    try:
        (folder / f".probe-{token}-{get_node_ip_address()}").write_text(token)
    except OSError as error:
        return f"cannot write into the map folder {out_dir} ({error})"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        client.admin.command("ping")
    except Exception as error:
        return f"cannot reach the database at {db._redacted(uri)} ({db._first_line(error)}): set FIFTYONE_DATABASE_URI to a MongoDB every node reaches"
    finally:
        client.close()
    return ""
