"""Which samples a scan does: the dataset read a page at a time in ``_id`` order, split into
``--shard`` parts, the done markers of the samples about to be redone cleared before they are handed out."""

from __future__ import annotations

from collections.abc import Iterator

from bson import ObjectId

from audit import names
from audit.scan.options import ScanOptions
from audit.store import db

PAGE_SIZE = 1000  # samples read from the database at a time


def read_pages(collection, fields: list[str], match=None, page_size: int | None = None) -> Iterator[list[tuple]]:
    """Rows ``(id, *fields)`` of the collection in ``_id`` order, ``page_size`` at a time: memory
    does not grow with the dataset, and samples written meanwhile do not shift the pages."""
    page_size = page_size or PAGE_SIZE
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
    for page in read_pages(collection, [names.DONE], page_size=10 * PAGE_SIZE):
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
        for page in read_pages(self.collection, fields, match):
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
