"""The local engine: decoding in worker processes (a DataLoader over the pending samples), the
models in this process, the map files written by a background thread."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from audit.images import open_rgb, unreadable_reason
from audit.models.preprocess import Preprocess
from audit.models.registry import AuditModel
from audit.scan.evidence import EvidenceOptions
from audit.scan.kernel import batch_fields, fast_memory_format, fold_fields, write_map
from audit.scan.options import ScanOptions
from audit.scan.pending import PendingSamples


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

    def examine(self, heads: dict, items: list[tuple], box_threshold: float, batch_size: int) -> Iterator[list]:
        """Top-ranked samples (``items``: (id, filepath, label, fold), in the order of their folds)
        through their fold's head (``heads``: fold -> `audit.scan.kernel.WithFoldHead`;
        `audit.scan.top_ranked`), decoded by one loader for them all: per batch, the rows of
        `audit.scan.kernel.fold_fields` for each fold's part of it."""
        labels = {item[0]: item[2] for item in items}
        folds = {item[0]: item[3] for item in items}
        loader = make_loader([item[:2] for item in items], [next(iter(heads.values()))], batch_size, self.workers)
        for batch in loader:
            rows = []
            for fold, part in _fold_parts(batch, [folds[sample_id] for sample_id in batch["index"]]):
                rows += fold_fields([heads[fold]], part, [labels[sample_id] for sample_id in part["index"]], box_threshold)
            yield rows


def _fold_parts(batch: dict, folds: list[int]) -> Iterator[tuple[int, dict]]:
    """The batch's runs of consecutive samples of one fold, each as a batch of its own."""
    start = 0
    for end in range(1, len(folds) + 1):
        if end == len(folds) or folds[end] != folds[start]:
            part = slice(start, end)
            yield folds[start], {key: [images[part] for images in value] if key == "images" else value[part]
                                 for key, value in batch.items()}
            start = end
