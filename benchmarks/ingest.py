"""Ingest time of the ILSVRC2012 validation set in the flat + devkit layout, into a private database.

    python benchmarks/ingest.py [--n 50000] [--out FOLDER] [--no-boxes] [--profile]

Writes the layout with benchmarks/ingest_files.py (hard links to the 1000 JPEGs of
../shared/data/imagenet-samples under N names, a devkit with a shuffled meta.mat, one VOC box file an
image, unless --no-boxes: then every size comes from an image header, as in the Kaggle layout) into
--out (default: a temporary folder, removed at the end), starts a throwaway mongod,
then times ``audit.data.open_source("imagenet-val", ...)`` twice: the first run adds N samples, the
second must add none and be fast. Checks a few samples' fields against the files. ``--profile``
prints the top of a cProfile of the first run.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from throwaway_db import start_throwaway_database  # noqa: E402  (imports no fiftyone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="number of images (default 50,000)")
    parser.add_argument("--out", type=Path, help="folder for the layout (kept; default: a temporary one)")
    parser.add_argument("--no-boxes", action="store_true", help="no box files: sizes from image headers")
    parser.add_argument("--profile", action="store_true", help="profile the first ingest")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="audit-ingest-bench-"))
    start_throwaway_database(scratch / "mongo")  # before fiftyone is imported, removed at exit
    root = args.out or scratch / "imagenet"
    try:
        run(root, args.n, not args.no_boxes, args.profile)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


def run(root: Path, n: int, boxes: bool, profile: bool) -> None:
    from benchmarks.ingest_files import make_layout

    start = time.perf_counter()
    make_layout(root, n, boxes=boxes)
    print(f"layout: {n} images{' + box files' if boxes else ''} in {root} ({time.perf_counter() - start:.1f} s)")

    from audit.data import open_source
    from audit.store import db

    db.ensure_database()
    warnings: list[str] = []
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    dataset, added = open_source("imagenet-val", root=str(root), name="ingest-bench", warn=warnings.append)
    if profiler:
        profiler.disable()
    first = time.perf_counter() - start
    print(f"first ingest: {added} samples in {first:.1f} s = {added / first:,.0f} samples/s "
          f"({len(warnings)} warnings)")

    start = time.perf_counter()
    dataset, again = open_source("imagenet-val", root=str(root), name="ingest-bench", warn=warnings.append)
    second = time.perf_counter() - start
    print(f"second ingest: {again} samples added in {second:.1f} s; dataset holds {len(dataset)} samples")

    check(dataset, n, added, again, boxes)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def check(dataset, n: int, added: int, again: int, boxes: bool) -> None:
    """The counts, and label, class index, box and size of a few samples against their files."""
    from PIL import Image

    from audit.data.classes import imagenet_names, imagenet_wnids
    from benchmarks.ingest_files import SAMPLES

    assert added == n == len(dataset) and again == 0, (added, again, len(dataset))
    sources = sorted(SAMPLES.glob("*.JPEG"))
    for sample in dataset.skip(n // 3).limit(3):
        number = int(Path(sample.filepath).stem.rsplit("_", 1)[1])
        source = sources[(number - 1) % len(sources)]  # the JPEG it is a link to (see ingest_files)
        wnid = source.name.split("_")[0]
        width, height = Image.open(source).size
        truth = sample.ground_truth
        index = imagenet_wnids().index(wnid)
        assert (truth.label, truth.wnid, truth.class_index) == (imagenet_names()[index], wnid, index), truth
        assert (sample.metadata.width, sample.metadata.height) == (width, height)
        if not boxes:
            assert not sample.has_field("gt_boxes") or sample.gt_boxes is None
            continue
        (box,) = sample.gt_boxes.detections
        expected = [width // 10 / width, height // 10 / height,
                    (width - 2 * (width // 10)) / width, (height - 2 * (height // 10)) / height]
        assert all(abs(a - b) < 1e-9 for a, b in zip(box.bounding_box, expected)), box.bounding_box
        assert box.label == truth.label
    print("checked: counts, labels, class indices, relative boxes and sizes")


if __name__ == "__main__":
    main()
