"""What Ray's CPU tasks run for ``audit scan --engine ray`` (`audit.scan.ray_engine`): reading pending
samples from MongoDB, decoding them to the models' 8-bit input pixels, and the probe of a node.

This module imports neither torch nor FiftyOne (PIL, NumPy and pymongo only), so a process that
only decodes stays small: on a node with many cores Ray runs one such process per core."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.errors import first_line
from audit.images import PixelRecipe, open_rgb, unreadable_reason


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
    recipes: tuple[PixelRecipe, ...]  # one per model


@dataclass(frozen=True)
class MongoChunk:
    """Pending samples with ``first <= _id <= last`` and no done marker of ``key``, read from the
    database by the task (a retried task skips what was written meanwhile)."""

    first: str
    last: str
    count: int

    def rows(self, source: Source) -> list[tuple]:
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
    """Samples given by the driver: (id, filepath, label, boxes) rows (the top-ranked few examined again)."""

    items: tuple
    count: int

    def rows(self, _source: Source) -> list[tuple]:
        return list(self.items)


def read_chunk(chunk: MongoChunk | ItemsChunk, source: Source) -> list:
    """A Ray read task: the chunk's rows decoded, as one block (none when all were done meanwhile)."""
    from ray.data.block import BlockAccessor

    rows = chunk.rows(source)
    return [BlockAccessor.batch_to_block(decode_rows(rows, source.recipes))] if rows else []


def decode_rows(rows: list[tuple], recipes: tuple[PixelRecipe, ...]) -> dict[str, np.ndarray]:
    """A batch of rows -> columns: the ids, file paths, labels and boxes (JSON), the decoded size,
    the error ("" when readable) and per model its input as (3, crop, crop) uint8 pixels."""
    min_side = max(r.resize_short for r in recipes)
    pixels = [np.zeros((len(rows), 3, r.crop, r.crop), np.uint8) for r in recipes]
    widths, heights, errors = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64), []
    for row, (_id, filepath, _label, _boxes) in enumerate(rows):
        try:
            image = open_rgb(filepath, min_side)
            for index, recipe in enumerate(recipes):
                pixels[index][row] = recipe.pixels(image)
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


def probe(out_dir: str, token: str, uri: str, shown_uri: str) -> str:
    """On one node: what keeps it from scanning ("" when nothing). It must read the file the driver
    wrote into the map folder, write one of its own there, and reach the database."""
    import pymongo
    from ray.util import get_node_ip_address

    folder = Path(out_dir)
    try:
        if (folder / f".probe-{token}").read_text() != token:
            raise OSError
    except OSError:
        return f"does not see the map folder {out_dir} (it must be shared storage, mounted at the same path)"
    try:
        (folder / f".probe-{token}-{get_node_ip_address()}").write_text(token)
    except OSError as error:
        return f"cannot write into the map folder {out_dir} ({error})"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        client.admin.command("ping")
    except Exception as error:
        return (f"cannot reach the database at {shown_uri} ({first_line(error)}): "
                "set FIFTYONE_DATABASE_URI to a MongoDB every node reaches")
    finally:
        client.close()
    return ""
