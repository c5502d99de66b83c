"""The ILSVRC2012 validation set in its four usual layouts, read as Records.

Layouts under ``root`` (``detect_layout`` tells which; ``layout=`` forces one):

``archives``
    ``root/ILSVRC2012_img_val.tar``, ``root/ILSVRC2012_devkit_t12.tar.gz`` and optionally
    ``root/ILSVRC2012_bbox_val_v3.tgz``, as downloaded. Each archive is extracted once into
    ``<cache_dir>/<archive name without extension>/`` (default cache_dir: ``root/.audit-extracted``),
    then read as ``extracted``. An extraction goes to ``<name>.partial`` and is renamed into place when
    it is complete, so the finished folder is the completion marker: an interrupted extraction is
    redone, a finished one never. Delete the cache folder to extract again.
``extracted``
    the images ``ILSVRC2012_val_NNNNNNNN.JPEG`` flat in ``root/val/``, or in ``root/`` when ``val/``
    holds none; the devkit folder ``root/ILSVRC2012_devkit_t12/data/`` with
    ``ILSVRC2012_validation_ground_truth.txt`` and ``meta.mat``; optional Pascal VOC box files
    ``<image stem>.xml`` in ``root/val/`` (where the bbox archive puts them) or beside the images.
``kaggle``
    ``root/ILSVRC/Data/CLS-LOC/val/*.JPEG``, ``root/LOC_val_solution.csv`` (boxes, the label is the
    first box's WordNet id) and optional ``root/LOC_synset_mapping.txt`` (the class list; the shipped
    1000 classes without it). Kaggle's per-image XMLs are not read: width and height stay None.
``folders``
    ``root/val/<wnid>/*.JPEG``, or ``root/<wnid>/*.JPEG`` when ``val/`` holds no class folders;
    optional box files ``<image stem>.xml`` beside the image or flat in ``root/val/``.

Labels are WordNet ids. A label that is not a well-formed WordNet id (a devkit class id missing
from meta.mat, a truncated Kaggle line) becomes None with a warning; a well-formed WordNet id outside
the class list is kept as given, with a warning. Images without a label are kept (label None).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

from audit.data.classes import imagenet_wnids
from audit.data.records import GroundTruthBox, Record, SourceError

try:
    import fcntl
except ImportError:  # Windows: concurrent first reads of the same archives are not serialised.
    fcntl = None

LAYOUTS = ("archives", "extracted", "kaggle", "folders")

IMAGES_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
BOXES_TAR = "ILSVRC2012_bbox_val_v3.tgz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_IMAGES = "ILSVRC/Data/CLS-LOC/val"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
CACHE_DIR = ".audit-extracted"

_VAL_IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.jpe?g", re.IGNORECASE)
_WNID = re.compile(r"n\d{8}")
_JPEG_SUFFIXES = (".jpeg", ".jpg")

_log = logging.getLogger(__name__)

Warn = Callable[[str], None]


@dataclass
class _Entry:
    """One listed image: its absolute path, its label, and its boxes or the VOC file that holds them."""

    path: str
    label: str | None
    boxes: list[GroundTruthBox] = field(default_factory=list)
    xml: str | None = None


def read_imagenet(
    root: str | os.PathLike,
    layout: str | None = None,
    limit: int | None = None,
    warn: Warn = _log.warning,
    cache_dir: str | os.PathLike | None = None,
    skip: Collection[str] = frozenset(),
    boxes: str | os.PathLike | None = None,
) -> Iterator[Record]:
    """The validation images under root as Records sorted by file name, at most ``limit`` of them.

    Layout detection, archive extraction and the listing happen at the call (SourceError is raised
    there); box files are parsed lazily, one per yielded record. ``warn`` receives one line per
    problem that leaves the rest loadable. ``cache_dir`` is where the ``archives`` layout extracts to.
    ``skip``: file paths to leave out after the limit (those a dataset holds already, as FiftyOne
    stores them), their box files unread. Paths are absolute with ``..`` resolved (links kept).
    ``boxes``: the folder of the box files (``<image stem>.xml``); without it, where the layout puts
    them, else the first folder under root that holds box files named after the images
    (`find_box_folder`: the bbox archive extracted into a folder of its own, ``root/bbox/val/``).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    root = _absolute(root)
    layout = layout or detect_layout(root)
    if layout == "archives":
        cache = _absolute(cache_dir) if cache_dir else root / CACHE_DIR
        entries = _list_flat(*_extract_archives(root, cache), warn)
    elif layout == "extracted":
        entries = _list_flat(_pick_folder(root, _is_val_image, "ILSVRC2012_val_*.JPEG images"),
                             root / DEVKIT_DIR, root / "val", warn)
    elif layout == "kaggle":
        entries = _list_kaggle(root, warn)
    elif layout == "folders":
        entries = _list_folders(root, warn)
    else:
        raise ValueError(f"unknown ImageNet layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if boxes is not None:
        _attach_boxes(entries, _require_folder(_absolute(boxes), "box folder (--boxes)"), warn)
    elif layout != "kaggle" and not any(entry.xml for entry in entries):
        found = find_box_folder(root, {Path(entry.path).stem for entry in entries})
        if found is not None:
            _attach_boxes(entries, found, warn)
    entries = entries[:limit]
    if skip:
        entries = [entry for entry in entries if entry.path not in skip]
    return _records(entries, warn)


def _absolute(path: str | os.PathLike) -> Path:
    """path absolute, ``~`` expanded and ``..`` resolved, symbolic links kept (as FiftyOne stores paths)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def detect_layout(root: str | os.PathLike) -> str:
    """The one layout of LAYOUTS that root holds; SourceError when none or several match."""
    root = _absolute(root)
    if not root.is_dir():
        raise SourceError(f"ImageNet root {root} is not a folder")
    found = _evidence(root)
    if not found:
        raise SourceError(
            f"no ImageNet validation set under {root}: expected {IMAGES_TAR} (archives), {DEVKIT_DIR}/ "
            f"(extracted), {KAGGLE_SOLUTION} (kaggle) or val/<wnid>/ folders (folders)")
    if len(found) > 1:
        clues = ", ".join(f"{path} ({layout})" for layout, path in found.items())
        raise SourceError(f"several ImageNet layouts under {root}: {clues}; choose one with layout=")
    return next(iter(found))


def _evidence(root: Path) -> dict[str, Path]:
    """For each layout that root looks like, the file or folder that gave it away."""
    clues = {
        "archives": next((root / n for n in (IMAGES_TAR, DEVKIT_TAR) if (root / n).is_file()), None),
        "extracted": (root / DEVKIT_DIR if (root / DEVKIT_DIR).is_dir()
                      else _first(root / "val", _is_val_image) or _first(root, _is_val_image)),
        "kaggle": next((root / n for n in (KAGGLE_SOLUTION, KAGGLE_IMAGES) if (root / n).exists()), None),
        "folders": _first(root / "val", _is_class_dir) or _first(root, _is_class_dir),
    }
    return {layout: clue for layout, clue in clues.items() if clue is not None}


def _is_val_image(entry: os.DirEntry) -> bool:
    return _VAL_IMAGE.fullmatch(entry.name) is not None


def _is_class_dir(entry: os.DirEntry) -> bool:
    return _WNID.fullmatch(entry.name) is not None and entry.is_dir()


def _first(folder: Path, wanted: Callable[[os.DirEntry], bool]) -> Path | None:
    """The first entry of folder that is wanted, None when there is none or no such folder."""
    try:
        with os.scandir(folder) as entries:
            return next((Path(entry.path) for entry in entries if wanted(entry)), None)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _pick_folder(root: Path, wanted: Callable[[os.DirEntry], bool], what: str) -> Path:
    """root/val when it holds what is wanted, else root; SourceError when both or neither do."""
    in_val, in_root = _first(root / "val", wanted), _first(root, wanted)
    if in_val and in_root:
        raise SourceError(f"{what} both in {root / 'val'} and in {root}: keep them in one of the two")
    if not (in_val or in_root):
        raise SourceError(f"expected {what} in {root / 'val'} or in {root}")
    return root / "val" if in_val else root


def _require(path: Path, what: str) -> Path:
    """path, or SourceError naming what was expected there."""
    if not path.exists():
        raise SourceError(f"expected {what} at {path}")
    return path


def _warn_some(warn: Warn, message: str, items: list[str]) -> None:
    """One warning for many alike problems: the count, the message and the first few items."""
    if items:
        more = ", ..." if len(items) > 3 else ""
        warn(f"{len(items)} {message}: {', '.join(items[:3])}{more}")


# --- archives ---------------------------------------------------------------------------------


def _extract_archives(root: Path, cache: Path) -> tuple[Path, Path, Path | None]:
    """The images folder, the devkit folder and the box folder (None without the bbox archive)."""
    images = _extract_once(_require(root / IMAGES_TAR, "the validation images archive"), cache)
    devkit = _extract_once(_require(root / DEVKIT_TAR, "the devkit archive"), cache) / DEVKIT_DIR
    boxes = _extract_once(root / BOXES_TAR, cache) / "val" if (root / BOXES_TAR).is_file() else None
    return images, devkit, boxes


def _extract_once(archive: Path, cache: Path) -> Path:
    """The folder holding archive's contents, extracted now unless a finished extraction exists."""
    target = cache / archive.name.split(".")[0]
    if target.is_dir():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with _locked(cache / ".lock"):
            if not target.is_dir():  # another process may have finished it while we waited
                partial = target.with_name(target.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                _extract(archive, partial)
                partial.rename(target)
    except (OSError, tarfile.TarError) as error:
        raise SourceError(f"cannot extract {archive} into {target}: {error}") from error
    return target


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path (released when the process dies too)."""
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _extract(archive: Path, folder: Path) -> None:
    """Extract archive into folder in one streaming pass; the ``data`` filter refuses members that
    would land outside folder (absolute paths, ``..``, links out) and special files."""
    if not hasattr(tarfile, "data_filter"):
        raise SourceError(f"cannot extract {archive} safely: this Python's tarfile has no extraction "
                          "filters (3.10.12+, 3.11.4+); extract it by hand and use the extracted layout")
    folder.mkdir()
    with tarfile.open(archive, "r|*") as tar:
        for member in tar:
            tar.extract(member, folder, filter="data")


# --- extracted (flat images + devkit) ---------------------------------------------------------


def _list_flat(images: Path, devkit: Path, boxes: Path | None, warn: Warn) -> list[_Entry]:
    """The flat validation images with their devkit labels and, where present, their box files."""
    classes = _read_meta(_require(devkit / "data" / "meta.mat", "the devkit's meta.mat"))
    truth = _require(devkit / "data" / GROUND_TRUTH, "the devkit's validation ground truth")
    labels = _read_ground_truth(truth, classes, warn)
    files, xmls = _scan_flat(images)
    if not files:
        raise SourceError(f"expected ILSVRC2012_val_*.JPEG images in {images}")
    if boxes is not None and boxes != images and boxes.is_dir():
        xmls.update(_scan_flat(boxes)[1])
    _warn_some(warn, f"images listed in {truth} are missing from {images}",
               [f"{_val_name(n)} (line {n})" for n in range(1, len(labels) + 1) if n not in files])
    _warn_some(warn, f"images in {images} have no line in {truth} and are kept without a label",
               [_val_name(n) for n in sorted(files) if n > len(labels)])
    if xmls:
        _warn_some(warn, "images have no box file", [_val_name(n) for n in sorted(files)
                                                      if _val_name(n) not in xmls])
    return [_Entry(files[n], labels[n - 1] if n <= len(labels) else None, xml=xmls.get(_val_name(n)))
            for n in sorted(files)]


def _val_name(number: int) -> str:
    """The file stem of validation image ``number`` (1-based)."""
    return f"ILSVRC2012_val_{number:08d}"


def _scan_flat(folder: Path) -> tuple[dict[int, str], dict[str, str]]:
    """In one pass over folder: validation image number -> image path, and file stem -> box file path."""
    images, xmls = {}, {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _VAL_IMAGE.fullmatch(entry.name)
            if match:
                images[int(match[1])] = entry.path
            elif entry.name.endswith(".xml"):
                xmls[entry.name[:-4]] = entry.path
    return images, xmls


def _read_meta(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WordNet id of the leaf classes (num_children == 0) in the devkit's meta.mat."""
    try:
        synsets = np.atleast_1d(scipy.io.loadmat(path, squeeze_me=True)["synsets"])
        columns = zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"])
        classes = {int(index): str(wnid) for index, wnid, children in columns if int(children) == 0}
    except (OSError, ValueError, KeyError, IndexError, TypeError, NotImplementedError,
            scipy.io.matlab.MatReadError) as error:
        raise SourceError(f"{path}: expected a devkit meta.mat with a synsets table ({error})") from error
    if not classes:
        raise SourceError(f"{path}: expected leaf classes (num_children == 0) in its synsets table")
    return classes


def _read_ground_truth(path: Path, classes: dict[int, str], warn: Warn) -> list[str | None]:
    """The label of validation image n at position n - 1: the WordNet id of the ILSVRC2012_ID on
    line n, or None (with a warning) where that line holds no class id of meta.mat."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SourceError(f"{path} is empty: expected one ILSVRC2012_ID per validation image")
    labels = []
    for number, line in enumerate(lines, 1):
        value = line.strip()
        label = classes.get(int(value)) if value.isascii() and value.isdigit() else None
        if label is None:
            warn(f"{path}:{number}: {value!r} is not one of the {len(classes)} class ids of meta.mat; "
                 f"{_val_name(number)} is kept without a label")
        labels.append(label)
    return labels


# --- kaggle -----------------------------------------------------------------------------------


def _list_kaggle(root: Path, warn: Warn) -> list[_Entry]:
    """The Kaggle validation images with the labels and boxes of LOC_val_solution.csv."""
    folder = _require(root / KAGGLE_IMAGES, "the Kaggle validation images folder")
    solution = _require(root / KAGGLE_SOLUTION, "the Kaggle validation labels")
    synsets = root / KAGGLE_SYNSETS
    classes = _read_synsets(synsets) if synsets.is_file() else set(imagenet_wnids())
    rows = _read_solution(solution, classes, warn)
    with os.scandir(folder) as entries:
        files = sorted((e.name, e.path) for e in entries if e.name.lower().endswith(_JPEG_SUFFIXES))
    if not files:
        raise SourceError(f"expected *.JPEG images in {folder}")
    stems = {name.rsplit(".", 1)[0] for name, _ in files}
    _warn_some(warn, f"images listed in {solution} are missing from {folder}",
               [f"{stem} (line {line})" for stem, (line, _, _) in rows.items() if stem not in stems])
    _warn_some(warn, f"images in {folder} have no line in {solution} and are kept without a label",
               [name for name, _ in files if name.rsplit(".", 1)[0] not in rows])
    entries = []
    for name, path in files:
        row = rows.get(name.rsplit(".", 1)[0])
        entries.append(_Entry(path, row[1], row[2]) if row else _Entry(path, None))
    return entries


def _read_synsets(path: Path) -> set[str]:
    """The WordNet ids of LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca" lines)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return {line.split()[0] for line in lines if line.strip()}


_Row = tuple[int, str | None, list[GroundTruthBox]]


def _read_solution(path: Path, classes: set[str], warn: Warn) -> dict[str, _Row]:
    """ImageId -> (line number, label, boxes) from LOC_val_solution.csv, in one read."""
    table: dict[str, _Row] = {}
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        rows = csv.reader(handle)
        if [cell.strip() for cell in next(rows, [])] != ["ImageId", "PredictionString"]:
            raise SourceError(f"{path}:1: expected the header ImageId,PredictionString")
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if not row or not row[0].strip():
                if row:
                    warn(f"{where}: no ImageId; line skipped")
                continue
            image_id = row[0].strip()
            if image_id in table:
                warn(f"{where}: {image_id} is listed again (first at line {table[image_id][0]}); line skipped")
                continue
            label, boxes = _parse_prediction(row[1] if len(row) == 2 else "", where, classes, warn)
            table[image_id] = (rows.line_num, label, boxes)
    return table


def _parse_prediction(
    text: str, where: str, classes: set[str], warn: Warn
) -> tuple[str | None, list[GroundTruthBox]]:
    """(label, boxes) of a PredictionString "wnid x1 y1 x2 y2 wnid x1 y1 x2 y2 ...": the label is the
    first WordNet id; complete boxes are kept and an incomplete tail is dropped with a warning."""
    tokens = text.split()
    if not tokens:
        warn(f"{where}: expected ImageId,PredictionString; the image is kept without a label")
        return None, []
    boxes = []
    for start in range(0, len(tokens) - 4, 5):
        wnid, *coords = tokens[start:start + 5]
        try:
            boxes.append(GroundTruthBox(wnid, *(float(c) for c in coords)))
        except ValueError:
            warn(f"{where}: box {start // 5 + 1} has a non-numeric coordinate; it and the rest are dropped")
            break
    if len(tokens) % 5:
        warn(f"{where}: truncated PredictionString ({len(tokens)} values, not 5 per box); "
             f"{len(boxes)} complete boxes kept")
    return _checked_label(tokens[0], where, classes, warn), boxes


def _checked_label(label: str, where: str, classes: set[str], warn: Warn) -> str | None:
    """label when it is a WordNet id (warning when outside classes), else None with a warning."""
    if not _WNID.fullmatch(label):
        warn(f"{where}: {label!r} is not a WordNet id; the image is kept without a label")
        return None
    if label not in classes:
        warn(f"{where}: {label} is not one of the {len(classes)} known classes; kept as given")
    return label


# --- class folders ----------------------------------------------------------------------------


def _list_folders(root: Path, warn: Warn) -> list[_Entry]:
    """The images of the <wnid>/ class folders, labelled by their folder, with their box files."""
    base = _pick_folder(root, _is_class_dir, "class folders named by WordNet id (n01440764/)")
    flat_xmls = _scan_flat(root / "val")[1] if (root / "val").is_dir() else {}
    known = set(imagenet_wnids())
    images, beside = [], {}
    with os.scandir(base) as classes:
        class_dirs = sorted((c.name, c.path) for c in classes if _is_class_dir(c))
    for wnid, class_dir in class_dirs:
        if wnid not in known:
            warn(f"{class_dir}: {wnid} is not one of the {len(known)} ImageNet classes; kept as given")
        with os.scandir(class_dir) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in _JPEG_SUFFIXES:
                    images.append((entry.name, entry.path, wnid))
                elif suffix == ".xml":
                    beside[os.path.join(class_dir, stem)] = entry.path
    if not images:
        raise SourceError(f"expected *.JPEG images in the class folders {base}/<wnid>/")
    images.sort()
    xmls = [beside.get(os.path.splitext(path)[0]) or flat_xmls.get(os.path.splitext(name)[0])
            for name, path, _ in images]
    if beside or flat_xmls:
        _warn_some(warn, "images have no box file", [path for (_, path, _), xml in zip(images, xmls)
                                                     if xml is None])
    return [_Entry(path, wnid, xml=xml) for (_, path, wnid), xml in zip(images, xmls)]


# --- box files elsewhere ----------------------------------------------------------------------

BOX_SEARCH_DEPTH = 3  # folders below root searched for box files
BOX_SEARCH_ENTRIES = 2000  # entries of a folder read while searching: a box folder has its XMLs early


def find_box_folder(root: Path, stems: set[str]) -> Path | None:
    """The first folder under root, breadth first and at most BOX_SEARCH_DEPTH levels down (hidden
    folders skipped), holding a Pascal VOC file named after one of the images (``<stem>.xml``), or
    None. Each folder is read only BOX_SEARCH_ENTRIES entries far, so that a training set of a
    million files beside the validation set costs a fraction of a second."""
    level = [root]
    for _depth in range(BOX_SEARCH_DEPTH + 1):
        below = []
        for folder in level:
            try:
                with os.scandir(folder) as entries:
                    for count, entry in enumerate(entries):
                        if count >= BOX_SEARCH_ENTRIES:
                            break
                        if entry.name.endswith(".xml") and entry.name[:-4] in stems and entry.is_file():
                            return Path(folder)
                        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                            below.append(Path(entry.path))
            except OSError:
                continue
        level = sorted(below)
    return None


def _require_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise SourceError(f"{what} not found: {path}")
    return path


def _attach_boxes(entries: list[_Entry], folder: Path, warn: Warn) -> None:
    """Give each entry the box file named after its image in folder (``<stem>.xml``), instead of any
    it had; warns about the images that have none there."""
    xmls = _scan_flat(folder)[1]
    if not xmls:
        raise SourceError(f"no box files (<image name>.xml) in {folder}")
    for entry in entries:
        entry.xml = xmls.get(Path(entry.path).stem)
    _warn_some(warn, f"images have no box file in {folder}", [Path(e.path).name for e in entries if e.xml is None])


# --- records and box files --------------------------------------------------------------------


def _records(entries: list[_Entry], warn: Warn) -> Iterator[Record]:
    """A Record per entry, parsing its box file (if any) only when it is reached."""
    for entry in entries:
        if entry.xml is None:
            yield Record(entry.path, entry.label, entry.boxes)
        else:
            boxes, width, height = _read_voc(entry.xml, warn)
            yield Record(entry.path, entry.label, boxes, width, height)


def _read_voc(path: str, warn: Warn) -> tuple[list[GroundTruthBox], int | None, int | None]:
    """(boxes, width, height) of a Pascal VOC file; unusable parts are warned about and left out."""
    try:
        annotation = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        warn(f"{path}: unreadable box file ({error}); the image is kept without boxes")
        return [], None, None
    width, height = (_positive_int(annotation.findtext(f"size/{key}")) for key in ("width", "height"))
    objects = annotation.findall("object")
    if not objects:
        warn(f"{path}: no <object> in the box file; the image is kept without boxes")
    boxes = []
    for number, obj in enumerate(objects, 1):
        try:
            coords = [float(obj.findtext(f"bndbox/{key}")) for key in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            warn(f"{path}: object {number} has no numeric <bndbox>; it is left out")
            continue
        if width and height:  # clipped to the image of <size>
            inside = [min(max(c, 0.0), float(width if i % 2 == 0 else height)) for i, c in enumerate(coords)]
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                warn(f"{path}: object {number}'s box {_box_text(coords)} has no area inside the "
                     f"{width}x{height} image; it is left out")
                continue
            if inside != coords:
                warn(f"{path}: object {number}'s box {_box_text(coords)} reaches outside the "
                     f"{width}x{height} image; clipped to {_box_text(inside)}")
                coords = inside
        boxes.append(GroundTruthBox((obj.findtext("name") or "").strip(), *coords))
    return boxes, width, height


def _box_text(coords: list[float]) -> str:
    return "(" + ", ".join(f"{c:g}" for c in coords) + ")"


def _positive_int(text: str | None) -> int | None:
    """The positive integer in text, else None."""
    try:
        value = int(float(text))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None
