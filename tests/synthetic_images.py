"""Test images with objects at known places (real photo parts pasted on a noise canvas), and a
dataset from (image file, label) rows, for the scan tests."""

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from audit.data import open_source


def make_dataset(name: str, rows: list[tuple[Path, str]], folder: Path):
    """A FiftyOne dataset from a CSV of (image file, label) rows, as `audit scan csv` makes it."""
    table = folder / f"{name}.csv"
    table.write_text("filepath,label\n" + "".join(f"{path},{label}\n" for path, label in rows))
    dataset, added = open_source("csv", str(table), name, None, "ground_truth", None, None, warn=print)
    assert added == len(rows)
    return dataset


def noise_canvas(width: int, height: int) -> np.ndarray:
    """Mid-gray with faint noise (a JPEG of a flat colour is too easy)."""
    noise = np.random.default_rng(0).normal(0, 12, (height, width, 3))
    return np.clip(128 + noise, 0, 255).astype(np.uint8)


def paste(canvas: np.ndarray, picture: np.ndarray, left: int, top: int, width: int) -> tuple[int, int, int, int]:
    """Paste ``picture`` resized to ``width`` (aspect kept) at (left, top); returns its (x1, y1, x2, y2)."""
    height = round(width * picture.shape[0] / picture.shape[1])
    resized = Image.fromarray(picture).resize((width, height), Image.BICUBIC)
    canvas[top:top + height, left:left + width] = np.asarray(resized)
    return left, top, left + width, top + height


def espresso_cup() -> np.ndarray:
    """The cup and saucer of skimage's coffee photo, without most of the table."""
    return skimage.data.coffee()[10:395, 70:485]


def cup_beside_camera(path: Path) -> Path:
    """Two objects, the label true for one: the espresso cup (smaller, at the right) beside the
    camera photo's man and tripod (larger: the dominant object). Like the golden retriever with a
    tennis ball on its head, labelled 'espresso' it is not a label error."""
    canvas = noise_canvas(760, 480)
    camera = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "sample_data" / "camera.jpg").convert("RGB"))
    paste(canvas, camera, 0, 0, 440)
    paste(canvas, espresso_cup(), 760 - 280 - 10, 480 - round(280 * 385 / 415) - 20, 280)
    Image.fromarray(canvas).save(path, quality=92)
    return path


OWN_LABELS = {"espresso", "missile", "moped", "lakeside"}


def own_labels_csv(folder: Path) -> Path:
    """A CSV source in a label set of its own (OWN_LABELS: no 'tripod' among them), real photos: the
    cup beside the camera (two objects, the label true for one), the camera photo labelled
    'espresso' (a label error whose true class the dataset does not have) and four right labels."""
    photos = Path(__file__).resolve().parents[1] / "sample_data"
    rows = [(cup_beside_camera(folder / "cup_and_camera.jpg"), "espresso"), (photos / "camera.jpg", "espresso"),
            (photos / "coffee.jpg", "espresso"), (photos / "rocket.jpg", "missile"),
            (photos / "motorcycle.jpg", "moped"), (photos / "china_lake.jpg", "lakeside")]
    table = folder / "labels.csv"
    table.write_text("filepath,label\n" + "".join(f"{path},{label}\n" for path, label in rows))
    return table
