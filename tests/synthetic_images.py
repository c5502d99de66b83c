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
    dataset, added = open_source("csv", root=str(table), name=name, labels=None, label_field="ground_truth", layout=None,
                                 limit=None, warn=print)
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


# A label set of its own, none of them ImageNet's classes: source photos per class.
OWN_CLASSES = {"kitty": ["chelsea.jpg"], "bike": ["motorcycle.jpg", "motorcycle_front_wheel.jpg"],
               "launch": ["rocket.jpg", "astronaut_shuttle_model.jpg"], "portrait": ["hopper_portrait.jpg", "hopper_tie.jpg"]}
SMALL_CLASS = "teacup"  # two samples only (crops of coffee.jpg)


def own_classes_folder(folder: Path, per_class: int = 8) -> tuple[Path, Path]:
    """A folder of class sub-folders in OWN_CLASSES (``per_class`` seeded crops and mirror images
    of each class's real photos), SMALL_CLASS with two, and one planted error: a crop of the cat
    photo filed under 'bike'. Returns (the folder, the planted file)."""
    photos = Path(__file__).resolve().parents[1] / "sample_data"
    rng = np.random.default_rng(0)

    def variant(source: str, path: Path) -> Path:
        image = Image.open(photos / source).convert("RGB")
        width, height = image.size
        share = rng.uniform(0.7, 0.95)
        w, h = int(width * share), int(height * share)
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = image.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.resize((320, round(320 * h / w))).save(path, quality=90)
        return path

    for label, sources in {**OWN_CLASSES, SMALL_CLASS: ["coffee.jpg"]}.items():
        for i in range(per_class if label != SMALL_CLASS else 2):
            variant(sources[i % len(sources)], folder / label / f"{label}_{i}.jpg")
    return folder, variant("chelsea.jpg", folder / "bike" / "planted_cat.jpg")
