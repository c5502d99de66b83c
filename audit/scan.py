"""The streaming scan: decode in worker processes -> one forward pass per batch (logits and
target-layer activations) -> Eigen-CAM, boxes and signals -> bulk writes to the dataset.

Bounded memory: the samples still to scan are read from the database a page at a time (in ``_id``
order) as the loader asks for them; results are written in bulk every
``settings.FLUSH_EVERY_SAMPLES``; heatmap PNGs are encoded and written by a background thread.

Crash safety: a sample counts as scanned only when ``audit_done`` holds the scan key of the
current settings. A sample about to be redone has its marker cleared first; its map file is
written to a temporary name and renamed into place; its fields are written next; the marker goes
last, once the map files and the fields of the whole flush are stored. A killed scan therefore
leaves nothing marked done that is not complete, and the next run picks up where it stopped.
One scan per dataset (or per shard) at a time: see `audit.lock`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import torch
from bson import ObjectId
from torch.utils.data import DataLoader, Dataset, default_collate

import audit
from audit import db, names, settings
from audit.evidence import (EvidenceOptions, batch_evidence, field_suffix, model_class_index, model_field_names,
                            sample_fields)
from audit.explain.boxes import DEFAULT_THRESHOLD
from audit.images import open_rgb, unreadable_reason
from audit import second_phase
from audit.head_choice import MODEL, HeadChoice, choose_head
from audit.lock import LockError, ScanLock
from audit.models.preprocess import Preprocess
from audit.models.registry import AuditModel, check_ensemble

SCAN_VERSION = 7  # bump when the fields a scan writes change meaning: older results are redone
PAGE_SIZE = 1000  # samples read from the database at a time
ENGINES = ("local", "ray")


@dataclass
class ClusterOptions:
    """Where and how ``--engine ray`` runs (`audit.ray_engine`)."""

    address: str | None = None  # "auto", HOST:PORT, or None: RAY_ADDRESS / a running cluster, else a local instance
    actors: int | None = None  # model replicas; None: one per GPU (with GPUs), else one per node
    gpus_per_actor: float | None = None  # None: 1 where the cluster has GPUs, else 0


@dataclass
class ScanOptions:
    batch_size: int = settings.DEFAULT_BATCH_SIZE
    workers: int | None = None  # decoding processes; None: by device and cores (`plan_resources`)
    limit: int | None = None
    shard: tuple[int, int] = (1, 1)  # (I, N): this process scans the I-th of N deterministic parts
    restart: bool = False
    box_threshold: float = DEFAULT_THRESHOLD
    all_boxes: bool = False  # a box for every large Eigen-CAM segment, not only the largest
    class_maps: bool = True  # class-discriminative maps for the predicted and the given class
    second_opinion: bool = True  # classify views of the samples in doubt (see audit.evidence)
    amp: bool | None = None  # mixed precision for the forward pass; None: on CUDA only
    threads: int | None = None  # torch threads of this process; None: torch's own default
    head: str = "auto"  # which head judges the labels: auto, model or fit (see `audit.head_choice`)
    engine: str = "local"  # local: this machine's processes; ray: a Ray cluster (`audit.ray_engine`)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    def evidence(self) -> EvidenceOptions:
        return EvidenceOptions(self.box_threshold, self.all_boxes, self.class_maps, self.second_opinion)

    def first_phase_evidence(self, head: str) -> EvidenceOptions:
        """With a fitted head, the class maps and second opinions wait for the head (the second phase)."""
        evidence = self.evidence()
        return evidence if head == MODEL else EvidenceOptions(self.box_threshold, self.all_boxes, False, False)


@dataclass
class ScanSummary:
    scanned: int
    skipped: int
    unreadable: int
    interrupted: bool = False
    seconds: float = 0.0  # wall time of the streaming loop
    write_seconds: float = 0.0  # of which spent writing to the database
    head: HeadChoice | None = None
    judged: int = 0  # samples the second phase wrote (neighbours; with a fitted head, its probabilities)
    classified_again: int = 0  # of which classified again through their fold's head (in doubt)
    second_phase_seconds: float = 0.0


class ImageFiles(Dataset):
    """Decodes each image once for all the models: EXIF rotation applied (maps follow what the user
    sees), JPEGs decoded at reduced size when far larger than the models need; then every model's
    own preprocessing (``images``: one tensor per model). An unreadable file yields its error.
    Items are ``(key, filepath)`` pairs, which the scan hands out lazily, page by page."""

    def __init__(self, preprocesses: list[Preprocess]):
        self.preprocesses = preprocesses
        self.min_side = max(p.resize_short for p in preprocesses)

    def __getitem__(self, item: tuple[str, str]) -> dict:
        key, filepath = item
        try:
            image = open_rgb(filepath, self.min_side)
            tensors = [preprocess(image) for preprocess in self.preprocesses]
            return {"index": key, "filepath": filepath, "images": tensors, "width": image.width,
                    "height": image.height, "error": ""}
        except Exception as error:
            message = unreadable_reason(error)
            blanks = [torch.zeros(3, p.crop, p.crop) for p in self.preprocesses]
            return {"index": key, "filepath": filepath, "images": blanks, "width": 0, "height": 0, "error": message}


def scan_key(models: list[AuditModel], options: ScanOptions, head: str = MODEL) -> str:
    """A digest of everything that changes the first phase's results; samples done under another key are redone."""
    settings_ = {"models": [model.settings() for model in models], "box_threshold": options.box_threshold,
                 "version": SCAN_VERSION}
    if head != MODEL:
        settings_["head"] = head
    for name in ("class_maps", "second_opinion"):  # named only when off
        if not getattr(options, name):
            settings_[name] = False
    if options.all_boxes:
        settings_["all_boxes"] = True
    return hashlib.sha256(json.dumps(settings_, sort_keys=True).encode()).hexdigest()[:16]


# --- resources: processes, threads, memory format, precision ------------------------------------


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan_resources(device: torch.device, workers: int | None = None,
                   threads: int | None = None) -> tuple[int, int | None]:
    """(decoding worker processes, torch threads for this process or None to leave torch's own).

    On a GPU the model waits for decoding: every core but one decodes. On a CPU the model and the
    decoders share the cores: decoding (PIL draft + resize) costs a fifth to a third of the model's
    CPU time (EfficientNet-Lite0 on ImageNet JPEGs), so a core in four decodes, at least one, and
    the model keeps torch's own thread count (measured on 2 cores: 1 worker + 2 threads beats
    1 + 1 and 0 + 2; benchmarks/scan_speed.py)."""
    if device.type != "cpu":
        return (settings.default_workers() if workers is None else workers), threads
    return (max(1, _cores() // 4) if workers is None else workers), threads


def fast_memory_format(device: torch.device) -> bool:
    """channels_last: about 1.6x faster convolutions on a CPU (oneDNN), the tensor-core layout on CUDA."""
    return device.type in ("cpu", "cuda")


@contextmanager
def model_runtime(model: AuditModel, options: ScanOptions):
    """Sets up this process and the model for a streaming pass, undone on exit; yields the number of
    decoding workers. Used by the scan and by benchmarks/scan_speed.py's bare loop alike."""
    workers, threads = plan_resources(model.device, options.workers, options.threads)
    saved_threads, saved_autocast = torch.get_num_threads(), model.forward.autocast
    if threads:
        torch.set_num_threads(threads)
    if fast_memory_format(model.device):
        model.network.to(memory_format=torch.channels_last)
    model.forward.autocast = model.device.type == "cuda" if options.amp is None else options.amp
    try:
        yield workers
    finally:
        model.forward.autocast = saved_autocast
        torch.set_num_threads(saved_threads)
        if fast_memory_format(model.device):
            model.network.to(memory_format=torch.contiguous_format)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


class _Collate:
    """default_collate, with the images channels-last."""

    def __init__(self, channels_last: bool):
        self.channels_last = channels_last

    def __call__(self, items: list[dict]) -> dict:
        batch = default_collate(items)
        if self.channels_last:
            batch["images"] = [images.contiguous(memory_format=torch.channels_last) for images in batch["images"]]
        return batch


def make_loader(items, models: list[AuditModel], batch_size: int, workers: int) -> DataLoader:
    """A DataLoader decoding ``items`` ((key, filepath) pairs, any iterable, read lazily) in
    ``workers`` processes for ``models`` (see `ImageFiles`), with pinned memory on CUDA."""
    device = models[0].device
    return DataLoader(ImageFiles([model.preprocess for model in models]), batch_size=batch_size,
                      sampler=items, num_workers=workers, worker_init_fn=_worker_init if workers else None,
                      collate_fn=_Collate(fast_memory_format(device)),
                      pin_memory=device.type == "cuda", persistent_workers=False)


# --- which samples: pages from the database -----------------------------------------------------


def _pages(collection, fields: list[str], match=None, page_size: int = PAGE_SIZE) -> Iterator[list[tuple]]:
    """Rows ``(id, *fields)`` of the collection in ``_id`` order, ``page_size`` at a time: memory
    does not grow with the dataset, and samples written meanwhile do not shift the pages."""
    last = None
    while True:
        view = collection if last is None else collection.match(db.F("_id") > ObjectId(last))
        if match is not None:
            view = view.match(match)
        columns = view.sort_by("_id", create_index=False).limit(page_size).values(["id", *fields])
        if not columns[0]:
            return
        yield list(zip(*columns))
        last = columns[0][-1]


def in_shard(sample_id: str, shard: tuple[int, int]) -> bool:
    """The deterministic split of ``--shard I/N``: the sample's ObjectId, as a number, modulo N."""
    index, count = shard
    return count == 1 or int(sample_id, 16) % count == index - 1


def count_shard(collection, key: str, shard: tuple[int, int]) -> tuple[int, int]:
    """(samples in this shard, of which already scanned under ``key``), without holding the ids."""
    if shard[1] == 1:
        return collection.count(), collection.match(db.F(names.DONE) == key).count()
    total = done = 0
    for page in _pages(collection, [names.DONE], page_size=10 * PAGE_SIZE):
        mine = [row for row in page if in_shard(row[0], shard)]
        total += len(mine)
        done += sum(row[1] == key for row in mine)
    return total, done


class PendingSamples:
    """The samples this run scans, handed to the DataLoader as ``(sample_id, filepath)`` as it asks
    for them. Each page's samples that carry a done marker (of other settings, or any with
    ``restart``) have it cleared before they are handed out, so that a sample whose new results
    are half-written never counts as done. ``given`` maps the ids in flight to their labels,
    ``boxes`` to their ground-truth boxes (relative [x, y, w, h]; when wanted and the dataset has them)."""

    def __init__(self, collection, key: str, options: ScanOptions, boxes: bool = False):
        self.collection, self.key, self.options = collection, key, options
        root = collection._root_dataset
        self.label = f"{db.label_field(root)}.label"
        self.box_field = f"{names.GT_BOXES}.detections.bounding_box" if boxes and root.has_sample_field(names.GT_BOXES) else None
        self.given: dict[str, str | None] = {}
        self.boxes: dict[str, list | None] = {}

    def pages(self) -> Iterator[list[tuple]]:
        """The rows ``(id, filepath, label, marker, [boxes])`` to scan, a page at a time, each page's
        markers cleared before it is handed out."""
        match = None if self.options.restart else (db.F(names.DONE) != self.key)
        left = self.options.limit
        fields = ["filepath", self.label, names.DONE] + ([self.box_field] if self.box_field else [])
        for page in _pages(self.collection, fields, match):
            rows = [row for row in page if in_shard(row[0], self.options.shard)]
            if left is not None:
                rows, left = rows[:left], left - min(left, len(rows))
            marked = {row[0]: None for row in rows if row[3] is not None}
            if marked:
                self.collection.set_values(names.DONE, marked, key_field="id")
            yield rows
            if left == 0:
                return

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for page in self.pages():
            for sample_id, filepath, given, _done, *boxes in page:
                self.given[sample_id] = given
                if self.box_field:
                    self.boxes[sample_id] = boxes[0] or None
                yield sample_id, filepath


# --- one decoded batch -> the fields of its samples ----------------------------------------------


def map_suffixes(models: list) -> list[str]:
    """The map file of model ``i`` is ``<sample id><suffix i>.png``: no suffix for the first model."""
    return [""] + [f".{field_suffix(model)}" for model in models[1:]]


def batch_fields(models: list[AuditModel], batch: dict, given_labels: list[str | None],
                 evidence_options: EvidenceOptions, out_dir: Path, label_set_indices: list[int] | None,
                 save_map) -> list[tuple[str, dict, list]]:
    """Per sample of a decoded batch (see `ImageFiles`): its id, the fields the first phase writes
    (`audit.evidence.sample_fields`; `error_fields` for an unreadable image) and what ``save_map(path,
    heatmap)`` returned for each of its map files. The local engine and the Ray actors both run this."""
    given_indices = [model_class_index(models[0], label) for label in given_labels]
    samples = batch_evidence(models, batch, given_indices, evidence_options)
    rows = []
    for row, (sample_id, sample) in enumerate(zip(batch["index"], samples)):
        if sample is None:
            rows.append((sample_id, error_fields(batch["error"][row], models), []))
            continue
        paths = [out_dir / f"{sample_id}{suffix}.png" for suffix in map_suffixes(models)]
        written = [save_map(path, result.map) for path, result in zip(paths, sample.results)]
        rows.append((sample_id, sample_fields(models, sample, given_labels[row], given_indices[row], paths,
                                              label_set_indices), written))
    return rows


class LocalEngine:
    """This machine: decoding in worker processes (`make_loader`), the models in this process, the
    map files written by a background thread."""

    passes = 1  # nothing is lost on the way: one pass does every pending sample

    def __init__(self, workers: int, png_writer: ThreadPoolExecutor):
        self.workers, self.png_writer = workers, png_writer

    def save_map(self, path: Path, heatmap):
        return self.png_writer.submit(write_map, path, heatmap)

    def first_phase(self, pending: PendingSamples, models: list[AuditModel], options: ScanOptions,
                    evidence_options: EvidenceOptions, label_set_indices, out_dir: Path) -> Iterator[list]:
        """Per batch of the pending samples, `batch_fields`' rows."""
        for batch in make_loader(pending, models, options.batch_size, self.workers):
            given_labels = [pending.given.pop(sample_id) for sample_id in batch["index"]]
            if evidence_options.second_opinion:
                batch["gt_boxes"] = [pending.boxes.pop(sample_id, None) for sample_id in batch["index"]]
            yield batch_fields(models, batch, given_labels, evidence_options, out_dir, label_set_indices, self.save_map)

    def classify_again(self, heads: list, items: list[tuple], evidence_options: EvidenceOptions, batch_size: int,
                       out_dir: Path) -> Iterator[list]:
        """The second phase's samples in doubt of one fold (``items``: (id, filepath, label, gt boxes))
        through the fold's heads: per batch, `audit.second_phase.fold_fields`' rows."""
        labels = {item[0]: (item[2], item[3]) for item in items}
        for batch in make_loader([item[:2] for item in items], heads, batch_size, self.workers):
            given = [labels[sample_id] for sample_id in batch["index"]]
            batch["gt_boxes"] = [boxes for _label, boxes in given]
            yield second_phase.fold_fields(heads, batch, [label for label, _ in given], evidence_options, out_dir,
                                           self.save_map)


# --- the loop -----------------------------------------------------------------------------------


def scan(dataset, models: AuditModel | list[AuditModel], options: ScanOptions | None = None,
         progress=None) -> ScanSummary:
    """Scan the unscanned samples of ``dataset`` (a dataset or a view) with ``models`` (one model,
    or several: an ensemble, see `audit.evidence.batch_evidence`).

    Two phases: the first streams the images (forward pass, embeddings, Eigen-CAM, boxes; with the
    model's head also the class maps and second opinions); the second (`audit.second_phase`) runs
    once the first is through, over every scanned sample of the dataset: the neighbours' vote and,
    with a fitted head (`audit.head_choice`), the fit and what depends on it.

    ``progress`` is a rich Progress or None. Raises `audit.lock.LockError` when another scan of
    the same dataset (and shard) runs. Ctrl-C (or SIGTERM) stops after writing what is done:
    ``interrupted`` is then set, and the same call resumes."""
    options = options or ScanOptions()
    models = [models] if isinstance(models, AuditModel) else list(models)
    check_ensemble(models)
    root = dataset._root_dataset  # ``dataset`` may be a view (the App's plugin)
    db.declare_audit_fields(root)
    choice = choose_head(root, models[0], options.head)
    evidence_options = options.first_phase_evidence(choice.kind)
    key = scan_key(models, options, choice.kind)
    out_dir = db.maps_dir(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Per-model fields of earlier ensemble scans that this one does not write: cleared on each sample
    # it redoes, so that no sample shows results of models it was not scanned with.
    model_fields = model_field_names(models)
    earlier_fields = db.audit_info(root).get("model_fields", [])
    cleared = dict.fromkeys(name for name in earlier_fields if name not in model_fields)
    writer = BulkWriter(dataset, key)
    skipped, unreadable, interrupted, started = 0, 0, False, time.perf_counter()
    with ExitStack() as engines, ScanLock(root.name, options.shard) as lock, _sigterm_as_interrupt(), \
            ExitStack() as runtimes, ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-maps") as png_writer:
        try:
            db.save_audit_info(root, scan={  # once the lock is ours: a refused scan changes nothing
                "models": [model.settings() for model in models], "key": key, "box_threshold": options.box_threshold,
                "all_boxes": options.all_boxes, "class_maps": options.class_maps,
                "second_opinion": options.second_opinion, "tool_version": audit.__version__},
                model_fields=sorted(set(earlier_fields) | set(model_fields)), head=choice.info())
            if options.engine == "ray":
                from audit.ray_engine import RayEngine

                engine = engines.enter_context(RayEngine(models, options, out_dir))
            else:
                workers = [runtimes.enter_context(model_runtime(model, options)) for model in models][0]
                engine = LocalEngine(workers, png_writer)
            if options.shard == (1, 1):
                remove_temporary_maps(out_dir)
            total, done = count_shard(dataset, key, options.shard)
            skipped = 0 if options.restart else done
            todo = total - skipped if options.limit is None else min(total - skipped, options.limit)
            task = progress.add_task("scanning", total=todo) if progress else None
            this_pass = options
            for _ in range(engine.passes):  # a further pass over what a cluster's failures left undone
                pending = PendingSamples(dataset, key, this_pass, boxes=evidence_options.second_opinion)
                for rows in engine.first_phase(pending, models, options, evidence_options, choice.label_set_indices,
                                               out_dir):
                    for sample_id, fields, written in rows:
                        unreadable += bool(fields.get(names.ERROR))
                        writer.add(sample_id, {**fields, **cleared, names.HEAD_DONE: None}, written)
                    if progress:
                        progress.advance(task, len(rows))
                    writer.flush_if_due()
                    if lock.lost:
                        raise LockError(f"lost the scan lock of '{root.name}' (this process stalled for over "
                                        f"{lock.stale_after:.0f} s and another scan took over); results so far are saved")
                writer.flush()
                if writer.written >= todo:
                    break
                this_pass = replace(options, restart=False, limit=todo - writer.written)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            writer.flush()
        if options.shard == (1, 1):
            remove_temporary_maps(out_dir)  # of writers killed in this run (a lost node, a restarted actor)
        summary = ScanSummary(writer.written, skipped, unreadable, interrupted, time.perf_counter() - started,
                              writer.write_seconds, choice)
        if not interrupted:
            summary = _second_phase(root, models, key, choice, options, engine, progress, summary)
    return summary


def _second_phase(root, models: list[AuditModel], key: str, choice: HeadChoice, options: ScanOptions,
                  engine, progress, summary: ScanSummary) -> ScanSummary:
    """Run `audit.second_phase` over the dataset, one at a time (the shards of a split wait for
    each other: the last one through judges every sample); Ctrl-C keeps what it wrote."""
    started = time.perf_counter()
    try:
        with ScanLock(root.name, kind="head", wait=True, doing="judged"):
            done = second_phase.run(root, models, key, choice, options.evidence(), options.batch_size, engine, progress)
        summary.judged, summary.classified_again = done.judged, done.forwarded
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.second_phase_seconds = time.perf_counter() - started
    return summary


def error_fields(message: str, models: list[AuditModel]) -> dict:
    """The fields of a sample whose image could not be read: the error, and no stale results."""
    fields = dict.fromkeys((names.PREDICTIONS, names.EIGENCAM, names.EIGENCAM_BOX, names.EIGENCAM_PC2,
                            names.GRADCAM_PRED, names.GRADCAM_GIVEN, names.EMBEDDINGS, names.HEAD_DONE,
                            *model_field_names(models)))
    return {**fields, names.ERROR: message, names.SIGNALS: {"error": message}}


def remove_temporary_maps(out_dir: Path) -> None:
    """Remove the half-written map files of writers that were killed (`write_map`): called while no
    other writer of the folder runs (the scan lock of the whole dataset is held)."""
    for temporary in out_dir.glob("*.tmp"):
        temporary.unlink(missing_ok=True)


def write_map(path: Path, heatmap) -> bool:
    """Write a heatmap PNG atomically: a killed scan never leaves a half-written file in place."""
    ok, encoded = cv2.imencode(".png", heatmap)
    if not ok:
        return False
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(encoded.tobytes())
    os.replace(temporary, path)
    return True


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler stopping the job) stops the scan like Ctrl-C: what is done is saved.
    Only where SIGTERM has its default action (not inside a server that handles it itself)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class BulkWriter:
    """Buffers per-sample fields and writes them in bulk, one ``set_values`` per field; the done
    marker (``marker``: the field it goes to) goes last, once the heatmap files of those samples
    (and only those) are on disk."""

    def __init__(self, dataset, key: str, marker: str = names.DONE):
        self.dataset = dataset
        self.key, self.marker = key, marker
        self.rows: dict[str, dict] = {}
        self.pending = []
        self.written = 0
        self.write_seconds = 0.0

    def add(self, sample_id: str, fields: dict, pending_files=()) -> None:
        self.rows[sample_id] = fields
        self.pending.extend(pending_files)

    def flush_if_due(self) -> None:
        if len(self.rows) >= settings.FLUSH_EVERY_SAMPLES:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        for pending in self.pending:
            if not pending.result():
                raise OSError("could not write a heatmap file")
        started = time.perf_counter()
        field_names = sorted({name for fields in self.rows.values() for name in fields})
        for name in field_names:
            values = {sid: fields.get(name) for sid, fields in self.rows.items()}
            self.dataset.set_values(name, values, key_field="id")
        self.dataset.set_values(self.marker, {sid: self.key for sid in self.rows}, key_field="id")
        self.write_seconds += time.perf_counter() - started
        self.written += len(self.rows)
        self.rows, self.pending = {}, []
