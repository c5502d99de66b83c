"""What both phases and both engines (local, Ray) share: the process set-up for a streaming pass,
a decoded batch -> its samples' fields (first phase: `batch_fields`; a top-ranked sample through its
fold's fitted head: `fold_fields`), the map files written atomically, and the bulk writer (a
sample's fields and its done marker in one update)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from audit import names, settings
from audit.heads.fitted import FoldHead
from audit.models.registry import AuditModel, model_class_index
from audit.scan.evidence import (
    EvidenceOptions,
    batch_evidence,
    distribution_signals,
    explain_batch,
    field_suffix,
    model_field_names,
    sample_fields,
)
from audit.scan.options import ScanOptions
from audit.signals import Signals
from audit.store import db

# The key of `fold_fields`' part of the signals (the class maps' shares, the mirror's view), merged into the stored ones.
SIGNALS_UPDATE = "signals_update"

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


class WithFoldHead:
    """A model whose classes are the dataset's and whose logits are one fold's fitted head on its
    target layer: the scan's evidence code (probabilities, class maps, second opinions) runs on it
    unchanged. Everything else is the model's."""

    is_imagenet = False

    def __init__(self, model: AuditModel, head: FoldHead, classes: list[str]):
        self.model, self.fold_head, self.classes = model, head, tuple(classes)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, images: torch.Tensor):
        _logits, activations = self.model.forward(images)
        return self.fold_head.logits_from_activations(activations[self.model.target_layer]), activations

    def head(self):
        return self.fold_head.logits_from_activations


def fold_fields(heads: list[WithFoldHead], batch: dict, labels: list[str | None],
                box_threshold: float) -> list[tuple[str, dict | None, list]]:
    """Per sample of a decoded batch, its mirror image through one fold's first head (one forward
    pass): its id and its class maps (``gradcam_pred``, ``gradcam_given``: small, inline, mirrored
    back into the image's frame; the model's input is a centre crop, so the mirror's crop is the
    crop's mirror), their shares inside the mirror's Eigen-CAM box (``class_map_on_object``) and the
    mirror's distribution (``views``: its ``flip``), the last two for the stored signals; None where
    unreadable. No files are written: the first phase's Eigen-CAM maps stay as they are."""
    head = heads[0]
    classes = list(head.classes)
    given = [classes.index(label) if label in classes else None for label in labels]
    options = EvidenceOptions(box_threshold=box_threshold, class_maps=True, second_opinion=False)
    mirrored = torch.flip(batch["images"][0], dims=[3])
    if fast_memory_format(head.device):
        mirrored = mirrored.contiguous(memory_format=torch.channels_last)
    rows = []
    for sample_id, result, given_index in zip(batch["index"], explain_batch(head, mirrored, batch, options, given), given):
        if result is None:
            rows.append((sample_id, None, []))
            continue
        fields = {map_field: None if result.class_maps.get(name) is None else
                  db.fo.Heatmap(map=np.ascontiguousarray(np.fliplr(result.class_maps[name])), range=[0, 255])
                  for name, map_field in (("given", names.GRADCAM_GIVEN), ("pred", names.GRADCAM_PRED))}
        signals = {"class_map_on_object": result.on_object or None,
                   "views": {"flip": distribution_signals(result.probabilities, given_index, classes)}}
        rows.append((sample_id, {**fields, SIGNALS_UPDATE: signals}, []))
    return rows


def error_fields(message: str, models: list[AuditModel]) -> dict:
    """The fields of a sample whose image could not be read: the error, and no stale results."""
    fields = dict.fromkeys((names.PREDICTIONS, names.EIGENCAM, names.EIGENCAM_BOX, names.EIGENCAM_PC2,
                            names.GRADCAM_PRED, names.GRADCAM_GIVEN, names.EMBEDDINGS, names.HEAD_DONE,
                            *model_field_names(models)))
    return {**fields, names.ERROR: message, names.SIGNALS: Signals(error=message).stored()}


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



class BulkWriter:
    """Buffers per-sample fields and writes them in bulk (`audit.store.db.write_samples`: one update
    per sample, all its fields or none), with the done marker (``marker``: the field it goes to, None
    for none), once the heatmap files of those samples (and only those) are on disk."""

    def __init__(self, dataset, key: str | None, marker: str | None = names.DONE):
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
        db.write_samples(self.dataset, self.rows, None if self.marker is None else {self.marker: self.key})
        self.write_seconds += time.perf_counter() - started
        self.written += len(self.rows)
        self.rows, self.pending = {}, []
