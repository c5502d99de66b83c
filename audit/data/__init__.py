"""Sources: each turns what the user has into Records, which ingest makes a FiftyOne dataset."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from audit import names
from audit.data.csvfile import read_csv
from audit.data.folders import read_folder
from audit.data.ingest import ingest, known_filepaths
from audit.data.records import Record, SourceError
from audit.data.sample import read_sample
from audit.store import db

SOURCES = ("imagenet-val", "folder", "csv", "fiftyone", "sample")


def default_name(source: str, root: str | None) -> str:
    """``imagenet-val`` and ``sample`` name their dataset after themselves; the others after --root."""
    if source in ("imagenet-val", "sample") or not root:
        return source
    return root if source == "fiftyone" else Path(root).resolve().stem


def open_source(source: str, *, root: str | None = None, name: str | None = None, labels: str | None = None,
                label_field: str = names.GROUND_TRUTH, layout: str | None = None, limit: int | None = None,
                warn: Callable[[str], None] = print, boxes: str | None = None,
                check: Callable[[list[Record]], None] | None = None):
    """The persistent dataset for a source (ingesting what is new); returns (dataset, added).
    ``boxes``: imagenet-val's box folder, when not where the layout puts it (found under the root otherwise).
    ``check`` sees every record of the source before anything is ingested, and may refuse them."""
    if source not in SOURCES:
        raise SourceError(f"unknown source '{source}': use one of {', '.join(SOURCES)}")
    name = name or default_name(source, root)
    if boxes is not None and source != "imagenet-val":
        raise SourceError("--boxes applies to the imagenet-val source")
    if source == "fiftyone":
        return _from_fiftyone(root, name, label_field), 0
    known = None
    if source == "sample":
        records = read_sample(warn)
    elif source == "csv":
        _require(root, "--root FILE.csv")
        records = read_csv(Path(root), warn)
    elif source == "folder":
        _require(root, "--root DIR")
        records = read_folder(Path(root), Path(labels) if labels else None, warn)
    else:
        from audit.data.imagenet import read_imagenet  # here: scipy (meta.mat) loads only for ImageNet

        root = root or os.environ.get("IMAGENET_ROOT")
        _require(root, "--root PATH (or $IMAGENET_ROOT)")
        known = known_filepaths(name)  # their box files are not read again
        records = read_imagenet(Path(root), layout=layout, limit=limit, warn=warn, skip=known, boxes=boxes)
    records = _first_read(records)  # a source that cannot be read fails before its dataset is created
    if check is not None and known is None:  # (imagenet-val skips what it has already: not every record)
        records = list(records)
        check(records)
    dataset, added = ingest(name, records, limit=limit, warn=warn, known=known)
    db.save_audit_info(dataset, source=source, label_field=names.GROUND_TRUTH)
    return dataset, added


def _first_read(records: Iterable[Record]) -> Iterator[Record]:
    """The records, the first of them read now: the readers are generators, which raise
    SourceError (a missing file, a CSV without its columns) only when first asked for a record."""
    records = iter(records)
    first = next(records, None)
    return records if first is None else itertools.chain([first], records)


def _require(root: str | None, what: str) -> None:
    if not root:
        raise SourceError(f"this source needs {what}")


def _from_fiftyone(root: str | None, name: str, label_field: str):
    _require(root, "--root DATASET_NAME")
    dataset = db.load_dataset(root)
    if name != root:
        dataset = db.fo.load_dataset(name) if db.fo.dataset_exists(name) else dataset.clone(name, persistent=True)
    if not dataset.has_sample_field(label_field):
        raise SourceError(f"dataset '{root}' has no field '{label_field}'; pass --label-field")
    db.save_audit_info(dataset, source="fiftyone", label_field=label_field)
    return dataset
