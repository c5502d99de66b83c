"""When the Eigen-CAM box and maps say nothing: how much of what the model saw they cover, by photo size.

For each scanned dataset named on the command line: the photos' short side, the Eigen-CAM box's
share of what the model saw (``cam_box_area / visible_fraction``, as audit.signals stores them),
and the Eigen-CAM map's spread (the share of what the model saw where the map reaches half its
peak, and where the App draws it: a tenth of its peak). ``--shrink SIZE`` first writes copies of
the ImageNet photos of ../shared/data/imagenet-val-dev at SIZE x SIZE with a labels CSV, to scan
the same photos small (the size alone, not CIFAR's framing):

    audit scan csv --root ../shared/data/cifar10n-dev/labels.csv --name cifar10n
    audit scan imagenet-val --root ../shared/data/imagenet-val-dev        # the dataset imagenet-val
    .venv/bin/python benchmarks/small_images.py --shrink 32 --out /tmp/inet32   # and 64, then:
    audit scan csv --root /tmp/inet32/labels.csv --name inet32
    .venv/bin/python benchmarks/small_images.py cifar10n imagenet-val inet64 inet32
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
IMAGENET = HERE.parent.parent / "shared" / "data" / "imagenet-val-dev"


def shrink(size: int, out: Path, root: Path = IMAGENET) -> None:
    """Copies of the photos at size x size (area resampling) and out/labels.csv with their class names."""
    classes = dict(line.split(" ", 1) for line in (root / "LOC_synset_mapping.txt").read_text().splitlines())
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(root / "LOC_val_solution.csv") as handle:
        for row in csv.DictReader(handle):
            picture = cv2.imread(str(root / "ILSVRC/Data/CLS-LOC/val" / f"{row['ImageId']}.JPEG"))
            target = out / f"{row['ImageId']}.jpg"
            cv2.imwrite(str(target), cv2.resize(picture, (size, size), interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            rows.append((target.name, classes[row["PredictionString"].split()[0]].split(",")[0]))
    with open(out / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("filepath", "label"), *rows])
    print(f"wrote {len(rows)} photos at {size}x{size} and {out / 'labels.csv'}")


def measure(name: str) -> dict:
    from audit import names
    from audit.signals import Signals
    from audit.store import db

    dataset = db.load_dataset(name)
    scanned = dataset.exists(names.EIGENCAM)
    stored, sides, maps = scanned.values([names.SIGNALS, "metadata", f"{names.EIGENCAM}.map_path"])
    box, spread, drawn = [], [], []
    for signals, path in zip(map(Signals.read, stored), maps):
        visible = signals.visible_fraction or 1.0
        box.append((signals.cam_box_area or 0.0) / visible)
        heat = cv2.imread(path, cv2.IMREAD_UNCHANGED).astype(float)
        peak = heat.max() or 1.0
        spread.append(float((heat >= peak / 2).mean()) / visible)
        drawn.append(float((heat >= peak / 10).mean()) / visible)  # what the App tints (docs/app.md)
    box, spread, drawn = np.clip(box, 0, 1), np.clip(spread, 0, 1), np.clip(drawn, 0, 1)
    short = np.array([min(m.width, m.height) for m in sides if m is not None])
    return {"dataset": name, "photos": len(box), "short side": f"{np.median(short):.0f}",
            "box: median": f"{np.median(box):.0%}", "box >= 75%": f"{(box >= 0.75).mean():.0%}",
            "box >= 90%": f"{(box >= 0.9).mean():.0%}", "map half-peak: median": f"{np.median(spread):.0%}",
            "map >= 50%": f"{(spread >= 0.5).mean():.0%}", "map drawn: median": f"{np.median(drawn):.0%}",
            "drawn >= 90%": f"{(drawn >= 0.9).mean():.0%}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", help="scanned datasets to measure")
    parser.add_argument("--shrink", type=int, help="write the ImageNet photos at this size first")
    parser.add_argument("--out", type=Path, help="where --shrink writes")
    args = parser.parse_args()
    if args.shrink:
        shrink(args.shrink, args.out)
    rows = [measure(name) for name in args.datasets]
    if rows:
        print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
        for row in rows:
            print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
