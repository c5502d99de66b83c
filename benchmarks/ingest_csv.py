"""A CSV source of N rows into FiftyOne, and a resumed scan's skip of N samples already done.

    python benchmarks/ingest_csv.py [--n 1000000] [--out FOLDER]

Writes N hard links (symbolic links across file systems) to the 1000 real JPEGs of
../shared/data/imagenet-samples, cycled, and a labels CSV (``filepath,label``: the class's WordNet
id) into --out (default: a temporary folder, removed at the end), starts a throwaway mongod, then
times:

- ``open_source("csv", ...)``: the first load adds N samples; a second adds none;
- a resumed scan of the whole dataset where every sample is done already (the samples are marked
  done under the scan's own key, as a finished scan leaves them; no image is decoded): what
  ``audit scan csv`` costs when it has nothing left to do, the model's load included.

Prints each time and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from throwaway_db import start_throwaway_database  # noqa: E402  (imports no fiftyone)

PAGE = 100_000  # samples marked done at a time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows (default 1,000,000)")
    parser.add_argument("--out", type=Path, help="folder for the files and the CSV (kept; default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="audit-ingest-csv-"))
    start_throwaway_database(scratch / "mongo")  # before fiftyone is imported, removed at exit
    folder = args.out or scratch / "photos"
    try:
        run(folder, args.n)
    finally:
        if args.out is None:
            shutil.rmtree(folder, ignore_errors=True)


def run(folder: Path, n: int) -> None:
    table = write_rows(folder, n)

    import audit
    from audit import names
    from audit.data import open_source
    from audit.scan.options import ScanOptions, scan_key
    from audit.store import db

    db.ensure_database()
    warnings: list[str] = []
    start = time.perf_counter()
    dataset, added = open_source("csv", root=str(table), name="ingest-csv-bench", warn=warnings.append)
    first = time.perf_counter() - start
    print(f"first load: {added:,} samples in {first:.1f} s = {added / first:,.0f} samples/s ({len(warnings)} warnings)")
    start = time.perf_counter()
    dataset, again = open_source("csv", root=str(table), name="ingest-csv-bench", warn=warnings.append)
    print(f"second load: {again} samples added in {time.perf_counter() - start:.1f} s; {len(dataset):,} samples")
    assert added == n == len(dataset) and again == 0, (added, again, len(dataset))

    models = audit.load_models(audit.model_names())
    options = ScanOptions()
    db.declare_audit_fields(dataset)
    key = scan_key(models, options)  # the labels are ImageNet's: the model's own head, its key
    start = time.perf_counter()
    ids = dataset.values("id")
    for begin in range(0, len(ids), PAGE):
        page = ids[begin:begin + PAGE]
        dataset.select(page).set_values(names.DONE, [key] * len(page))
    print(f"marked {len(ids):,} samples done in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    result = audit.audit_dataset(dataset, models, options=options)
    resumed = time.perf_counter() - start
    assert result.scan.scanned == 0 and result.scan.skipped == n, result.scan
    print(f"resumed scan: {result.scan.skipped:,} samples skipped, none scanned, in {resumed:.1f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak:,.0f} MB")


def write_rows(folder: Path, n: int) -> Path:
    """N links to the sample JPEGs, cycled, in folders of 10,000, and their labels CSV."""
    from benchmarks.ingest_files import SAMPLES, link

    sources = sorted(SAMPLES.glob("*.JPEG"))
    if not sources:
        raise SystemExit(f"expected the JPEGs of {SAMPLES}")
    start = time.perf_counter()
    rows = []
    for number in range(n):
        source = sources[number % len(sources)]
        target = folder / f"{number // 10_000:03d}" / f"photo_{number:07d}.JPEG"
        if number % 10_000 == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
        link(source, target)
        rows.append(f"{target},{source.name.split('_')[0]}\n")
    table = folder / "labels.csv"
    table.write_text("filepath,label\n" + "".join(rows))
    print(f"files: {n:,} links and {table} in {time.perf_counter() - start:.1f} s")
    return table


if __name__ == "__main__":
    main()
