"""Human truths on label errors, read from the files they come in, matched to samples by file name.

Three layouts are read:

- ``ImageId,verdict,...`` (cleanlab's ``verified_labels.csv``, ImageNet ReaL's ``verified_labels_real.csv``):
  ``label_ok`` means the given label is right, any other verdict is a label error, and the human's own
  label is ``guessed_wnid`` where given. Images not listed were never proposed: they count as fine.
  Beside ``verified_labels_real.csv``, ReaL's ``real_labels.csv`` (``filename,...,real_indices,...,
  multi_label``) adds every label ReaL's raters gave and which images hold several label-worthy objects.
- ``filepath,label_error[,multi_label]`` (imagenette's and cifar10-dev's ``truth_*.csv``): 0/1 columns;
  only the listed images are judged, the others have no truth.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from audit.data.classes import imagenet_names, resolve_imagenet_label
from audit.errors import AuditError

REAL_LABELS = "real_labels.csv"


class TruthError(AuditError):
    """The truth file cannot be used; one line."""


@dataclass
class Truth:
    """What humans said about some images, by file name stem."""

    verdicts: dict[str, str]  # stem -> verdict ("label_ok" or the kind of label error)
    unlisted_are_fine: bool  # whether an image the file does not name counts as correctly labelled
    human_labels: dict[str, set[str]] = field(default_factory=dict)  # stem -> the labels humans chose
    multi_label: dict[str, bool] | None = None  # stem -> several label-worthy objects; None: the file does not say

    def judges(self, stem: str) -> bool:
        return self.unlisted_are_fine or stem in self.verdicts

    def is_error(self, stem: str) -> bool:
        return self.verdicts.get(stem, "label_ok") != "label_ok"


def read_truth(path: Path) -> Truth:
    """The truth in ``path``, in any of the layouts above; TruthError (one line) if it is none of them."""
    path = Path(path)
    if not path.is_file():
        raise TruthError(f"truth file not found: {path}")
    rows, columns = _read_rows(path)
    if {"ImageId", "verdict"} <= columns:
        truth = Truth({row["ImageId"].strip(): row["verdict"].strip() for row in rows}, unlisted_are_fine=True,
                      human_labels={row["ImageId"].strip(): {_class_name(row["guessed_wnid"])}
                                    for row in rows if (row.get("guessed_wnid") or "").strip()})
        beside = path.with_name(REAL_LABELS)
        if "real" in path.stem and beside.is_file():
            _add_real_labels(truth, beside)
        return truth
    if {"filepath", "label_error"} <= columns:
        verdicts = {Path(row["filepath"]).stem: "label_error" if _flag(row, "label_error", path) else "label_ok"
                    for row in rows}
        multi = ({Path(row["filepath"]).stem: _flag(row, "multi_label", path) for row in rows}
                 if "multi_label" in columns else None)
        return Truth(verdicts, unlisted_are_fine=False, multi_label=multi)
    raise TruthError(f"{path}: expected the columns ImageId,verdict (as in verified_labels.csv) or "
                     "filepath,label_error[,multi_label] (as in truth_mturk.csv)")


def _read_rows(path: Path) -> tuple[list[dict], set[str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader), set(reader.fieldnames or [])


def _flag(row: dict, column: str, path: Path) -> bool:
    value = (row.get(column) or "").strip()
    if value not in ("0", "1"):
        raise TruthError(f"{path}: {column} must be 0 or 1, not {value!r} ({row.get('filepath')})")
    return value == "1"


def _class_name(label: str) -> str:
    """An ImageNet class's display name (the model's class name) for a WordNet id or name; else as given."""
    index = resolve_imagenet_label(label.strip())
    return label.strip() if index is None else imagenet_names()[index]


def _add_real_labels(truth: Truth, path: Path) -> None:
    """ReaL's labels (every one its raters gave) and its multi-label images, from real_labels.csv."""
    rows, columns = _read_rows(path)
    if not {"filename", "real_indices", "multi_label"} <= columns:
        raise TruthError(f"{path}: expected the columns filename, real_indices and multi_label")
    truth.multi_label = {}
    for row in rows:
        stem = Path(row["filename"]).stem
        truth.multi_label[stem] = row["multi_label"].strip() == "1"
        indices = [int(i) for i in row["real_indices"].split() if i.strip().isdigit()]
        if indices and truth.is_error(stem):
            truth.human_labels[stem] = {imagenet_names()[i] for i in indices}
