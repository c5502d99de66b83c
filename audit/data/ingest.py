"""Records -> a persistent FiftyOne dataset, in bulk; re-ingesting adds nothing twice.

Each sample gets ``ground_truth`` (``fo.Classification``: the ImageNet display name as ``label``,
``wnid`` and ``class_index`` as attributes, or the label exactly as given when it names no ImageNet
class), ``gt_boxes`` (``fo.Detections`` in FiftyOne's relative [x, y, width, height]) when the record
has boxes, and ``metadata`` (``fo.ImageMetadata`` width and height, from the record or the image
header).

Speed: the samples are written the way FiftyOne's own dataset importers write them, as sample
documents inserted a batch at a time, rather than through ``Dataset.add_samples``, which builds a
``fo.Sample`` and its mongoengine documents twice per image (about 750 samples/s against several
thousand; ``benchmarks/ingest.py``). The documents are those ``add_samples`` writes, label documents
included (they are made from FiftyOne's own label classes); tests/test_ingest.py compares the two.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import fiftyone.core.media as fomm
from bson import ObjectId
from fiftyone.core.odm.sample import _generate_rand
from PIL import ExifTags, Image

from audit import names
from audit.boxformat import to_relative
from audit.data.classes import imagenet_names, imagenet_wnids, resolve_imagenet_label
from audit.data.records import Record, SourceError
from audit.store import db

fo = db.fo
INSERT_BATCH = 2000  # samples a database write
HEADER_THREADS = 8  # image-header reads in flight for records without a size (I/O bound)


def ground_truth_label(label: str | None):
    """A Classification with the ImageNet display name, WordNet id and class index when the label
    names an ImageNet class; otherwise the label exactly as given."""
    if label is None:
        return None
    index = resolve_imagenet_label(label)
    if index is None:
        return fo.Classification(label=str(label))
    classification = fo.Classification(label=imagenet_names()[index], wnid=imagenet_wnids()[index],
                                        class_index=index)
    if str(label) != classification.label:
        classification["given_as"] = str(label)
    return classification


def image_size(record: Record) -> tuple[int, int] | None:
    """(width, height) as a viewer shows the image (turned by its EXIF orientation), from the record
    or the file's header (no decoding); None if unreadable."""
    if record.width and record.height:
        return record.width, record.height
    try:
        with Image.open(record.filepath) as image:
            width, height = image.size
            turned = image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)  # a quarter turn either way
            return (height, width) if turned else (width, height)
    except Exception:  # unreadable files are reported by the scan, on their sample
        return None


def known_filepaths(name: str) -> set[str]:
    """The filepaths the dataset ``name`` holds already; empty when there is no such dataset."""
    db.ensure_database()
    return set(fo.load_dataset(name).values("filepath")) if fo.dataset_exists(name) else set()


def normalized_path(path: str) -> str:
    """The path as FiftyOne stores it (absolute, ``~`` expanded, ``..`` resolved; links kept)."""
    return os.path.abspath(os.path.expanduser(path))


def ingest(name: str, records: Iterable[Record], limit: int | None = None,
           warn: Callable[[str], None] = print, known: set[str] | None = None):
    """Add the records' images to the persistent dataset ``name`` (created when missing), skipping
    files it already holds (``known``: their filepaths, when the caller has read them already) and,
    with a warning, files that are no images; returns (dataset, number of samples added).

    ``limit`` caps the records read, those already in the dataset included, so that ``limit=N``
    always means the source's first N images.
    """
    db.ensure_database()
    dataset = fo.load_dataset(name) if fo.dataset_exists(name) else fo.Dataset(name, persistent=True)
    seen = set(dataset.values("filepath")) if known is None else set(known)
    writer = _Writer(dataset)
    added = 0
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        for batch in _new_records(records, seen, limit, warn):
            added += writer.write(batch, _sizes(batch, pool))
    return dataset, added


def _new_records(records: Iterable[Record], seen: set[str], limit: int | None,
                 warn: Callable[[str], None]) -> Iterator[list[tuple[str, Record]]]:
    """Batches of (normalized path, record) for the image records not seen yet, the first ``limit``
    records considered."""
    batch = []
    for offered, record in enumerate(records):
        if limit is not None and offered >= limit:
            break
        path = normalized_path(record.filepath)
        if path in seen:
            continue
        seen.add(path)
        media = fomm.get_media_type(path)
        if media != fomm.IMAGE:
            warn(f"{path}: not an image file ({media} media); skipped")
            continue
        batch.append((path, record))
        if len(batch) >= INSERT_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _sizes(batch: list[tuple[str, Record]], pool: ThreadPoolExecutor) -> list[tuple[int, int] | None]:
    """The (width, height) of each record: its own, else read from the image headers in threads."""
    sizes = [(r.width, r.height) if r.width and r.height else None for _, r in batch]
    missing = [i for i, size in enumerate(sizes) if size is None]
    for i, size in zip(missing, pool.map(image_size, [batch[i][1] for i in missing])):
        sizes[i] = size
    return sizes


def _metadata(path: str, size: tuple[int, int] | None) -> dict:
    """What FiftyOne's ImageMetadata holds and is cheap to know at ingest: the image's size when the
    record or its header gave it, the file's bytes (a stat) and its MIME type (from its name)."""
    metadata = {"_cls": "ImageMetadata", "mime_type": mimetypes.guess_type(path)[0]}
    try:
        metadata["size_bytes"] = os.stat(path).st_size
    except OSError:  # a missing file is the scan's to report
        pass
    if size:
        metadata.update(width=size[0], height=size[1])
    return metadata


class _Writer:
    """Sample documents for records, inserted in bulk into one image dataset."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.declared: set[str] = set()
        self.prepared = False
        self.labels: dict[str | None, dict | None] = {}
        self.box_labels: dict[str, dict] = {}
        self.detections = dict(fo.Detections().to_dict())

    def write(self, batch: list[tuple[str, Record]], sizes: list[tuple[int, int] | None]) -> int:
        """Insert the batch's samples; the number inserted."""
        self._prepare()
        now = datetime.utcnow()  # as FiftyOne stamps samples: naive UTC
        docs = [self._document(path, record, size, now) for (path, record), size in zip(batch, sizes)]
        for field, kind in ((names.GROUND_TRUTH, fo.Classification), (names.GT_BOXES, fo.Detections)):
            if field not in self.declared and any(field in doc for doc in docs):
                self._declare(field, kind)
        self.dataset._sample_collection.insert_many(docs, ordered=True)
        return len(docs)

    def _prepare(self) -> None:
        """A dataset of images, as the first image sample added would make it; SourceError when the
        dataset holds other media or media references (which exclude file paths)."""
        if self.prepared:
            return
        if self.dataset.media_type is None:
            self.dataset.media_type = "image"
        elif self.dataset.media_type != "image":
            raise SourceError(f"dataset '{self.dataset.name}' holds {self.dataset.media_type} samples, "
                              "not images; choose another --name")
        if getattr(self.dataset, "media_sources", None):
            raise SourceError(f"dataset '{self.dataset.name}' holds media references, which cannot be mixed "
                              "with image files; choose another --name")
        self.prepared = True

    def _declare(self, field: str, kind: type) -> None:
        """Declare field as an embedded kind, or SourceError when it exists with another type."""
        existing = self.dataset.get_field_schema().get(field)
        if existing is None:
            self.dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=kind)
        elif not (isinstance(existing, fo.EmbeddedDocumentField) and issubclass(existing.document_type, kind)):
            raise SourceError(f"dataset '{self.dataset.name}' has a field '{field}' that is no "
                              f"{kind.__name__}; choose another --name")
        self.declared.add(field)

    def _document(self, path: str, record: Record, size: tuple[int, int] | None, now: datetime) -> dict:
        doc = {"filepath": path, "tags": [], "created_at": now, "last_modified_at": now,
               "_media_type": "image", "_rand": _generate_rand(), "_dataset_id": self.dataset._doc.id}
        doc["metadata"] = _metadata(path, size)
        truth = self._label(record.label)
        if truth is not None:
            doc[names.GROUND_TRUTH] = truth
        if record.boxes and size:
            width, height = size
            doc[names.GT_BOXES] = {**self.detections, "detections": [
                _fresh(self._box_label(box.label), bounding_box=to_relative((box.x1, box.y1, box.x2, box.y2), width, height))
                for box in record.boxes]}
        return doc

    def _label(self, label: str | None) -> dict | None:
        """A new ground-truth document for label (its template made once per distinct label)."""
        if label not in self.labels:
            classification = ground_truth_label(label)
            self.labels[label] = None if classification is None else dict(classification.to_dict())
        template = self.labels[label]
        return None if template is None else _fresh(template)

    def _box_label(self, label: str) -> dict:
        if label not in self.box_labels:
            index = resolve_imagenet_label(label)
            name = imagenet_names()[index] if index is not None else label
            self.box_labels[label] = dict(fo.Detection(label=name).to_dict())
        return self.box_labels[label]


def _fresh(template: dict, **values) -> dict:
    """A copy of a label document with its own id and its own lists and dicts, values set."""
    doc = {key: value.copy() if isinstance(value, (list, dict)) else value for key, value in template.items()}
    doc["_id"] = ObjectId()
    doc.update(values)
    return doc
