"""The user's own predictions as a head (``--predictions``): class probabilities they already have,
ideally out of fold (cleanlab's ``pred_probs``), which judge the labels in place of a head of ours.

Three layouts: a CSV ``filepath,<class>,<class>,...`` (one column a class, named; rows matched to the
samples by file: paths absolute, relative to the CSV, or as the labels CSV writes them); an ``.npy``
N x C matrix whose rows follow
the CSV source's rows and whose columns follow ``--classes``; or, for a FiftyOne dataset, a
Classification field with ``logits`` (FiftyOne's convention, classes from ``dataset.classes``).
Values that are not probabilities (rows not summing to 1) are taken for logits and turned into
probabilities with a softmax, which the scan says. Anything that does not fit is refused in one line
before anything is written (`audit.errors.InputError`).

Predictions made in sample (by a model trained on these very labels) have memorised the labels and
cannot see their errors: `in_sample_share` measures the telltale.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from audit import names
from audit.data.records import Record, absolute_path
from audit.errors import InputError
from audit.store import db

SUM_TOLERANCE = 0.01  # a row of probabilities sums to 1 within this
SHARES = tuple(i / 10 for i in range(11))  # the given probabilities' share against the model's or their neighbours'
TIE = 1e-9  # mean log-likelihoods this close are a tie
# In-sample telltale: the label is the top class at this probability or more on this share of the samples.
MEMORISED_PROB, MEMORISED_SHARE = 0.95, 0.9


@dataclass
class GivenPredictions:
    """Class probabilities, one row a sample: ``keys`` names each row's file (None: rows in the
    source's order), ``classes`` each column."""

    source: str
    classes: tuple[str, ...]
    probabilities: np.ndarray  # float32, rows sum to 1
    keys: list[str] | None
    from_logits: bool

    def describe(self) -> str:
        kind = "logits, turned into probabilities" if self.from_logits else "probabilities"
        return f"{self.source} ({len(self.probabilities)} rows, {len(self.classes)} classes, {kind})"


def read_predictions(path: Path, *, classes: tuple[str, ...] | None = None) -> GivenPredictions:
    """A predictions file: ``.npy`` (columns named by ``classes``) or a CSV with a ``filepath`` column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"predictions file not found: {path}")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, classes)
    return _read_csv(path, classes)


def _read_npy(path: Path, classes: tuple[str, ...] | None) -> GivenPredictions:
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"cannot read {path} as a NumPy matrix: {error}") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise InputError(f"{path} holds a {matrix.dtype} array of shape {matrix.shape}: expected N x C numbers")
    if classes is None:
        raise InputError(f"{path} does not name its columns: pass --classes FILE (one class a line, in the columns' order)")
    if matrix.shape[1] != len(classes):
        raise InputError(f"{path} has {matrix.shape[1]} columns, but --classes names {len(classes)} classes")
    probabilities, from_logits = to_probabilities(matrix, str(path))
    return GivenPredictions(str(path), tuple(classes), probabilities, None, from_logits)


def _read_csv(path: Path, classes: tuple[str, ...] | None) -> GivenPredictions:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip() for column in next(reader, [])]
        if not header or header[0].lower() != "filepath" or len(header) < 3:
            raise InputError(f"{path}: expected a header 'filepath,<class>,<class>,...' (one column a class)")
        columns = tuple(header[1:])
        if classes is not None and set(classes) != set(columns):
            raise InputError(f"{path}: its class columns are not the --classes ({_difference(columns, classes)})")
        keys, rows = [], []
        for line, row in enumerate(reader, start=2):
            if not row or not row[0].strip():
                raise InputError(f"{path}:{line}: no file path")
            if len(row) != len(header):
                raise InputError(f"{path}:{line}: {len(row)} values for {len(header)} columns")
            try:
                rows.append([float(value) for value in row[1:]])
            except ValueError:
                raise InputError(f"{path}:{line}: a value is not a number") from None
            keys.append(row[0].strip())
    if not rows:
        raise InputError(f"{path} has no rows")
    repeated = _first_repeat(keys)
    if repeated is not None:
        raise InputError(f"{path}: {repeated} has two rows")
    probabilities, from_logits = to_probabilities(np.array(rows, dtype=np.float64), str(path))
    return GivenPredictions(str(path), columns, probabilities, keys, from_logits)


def field_predictions(dataset, field: str, *, classes: tuple[str, ...] | None = None) -> GivenPredictions:
    """A FiftyOne dataset's Classification field with ``logits``; its classes from ``classes``, else
    ``dataset.classes[field]`` or ``dataset.default_classes``."""
    if not dataset.has_sample_field(field):
        raise InputError(f"dataset '{dataset.name}' has no field '{field}' to take predictions from")
    classes = classes or tuple(dataset.classes.get(field) or dataset.default_classes or ())
    if not classes:
        raise InputError(f"the logits of '{field}' are not named: set dataset.classes['{field}'] or pass --classes FILE")
    filepaths, logits = dataset.values(["filepath", f"{field}.logits"])
    missing = [path for path, row in zip(filepaths, logits) if row is None]
    if missing:
        raise InputError(f"{len(missing)} samples have no logits in '{field}' (the first: {missing[0]})")
    matrix = np.array([np.asarray(row, dtype=np.float64) for row in logits])
    if matrix.ndim != 2 or matrix.shape[1] != len(classes):
        raise InputError(f"the logits of '{field}' have {matrix.shape[-1]} values, but {len(classes)} classes are named")
    probabilities, _ = to_probabilities(matrix, f"field '{field}'", logits=True)
    return GivenPredictions(f"field '{field}'", tuple(classes), probabilities, list(filepaths), True)


def to_probabilities(matrix: np.ndarray, source: str, logits: bool | None = None) -> tuple[np.ndarray, bool]:
    """Rows of probabilities (float32), and whether they were logits (rows that do not sum to 1)."""
    bad = ~np.isfinite(matrix)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InputError(f"{source}: row {row + 1} holds NaN or an infinite value")
    if logits is None:
        logits = bool(np.abs(matrix.sum(axis=1) - 1.0).max() > SUM_TOLERANCE)
        if not logits and (matrix < 0).any():
            row = int(np.argwhere(matrix < 0)[0][0])
            raise InputError(f"{source}: row {row + 1} holds a negative probability")
    if logits:
        shifted = np.exp(matrix - matrix.max(axis=1, keepdims=True))
        matrix = shifted / shifted.sum(axis=1, keepdims=True)
    else:
        matrix = matrix / matrix.sum(axis=1, keepdims=True)
    return matrix.astype(np.float32), logits


def rows_for(predictions: GivenPredictions, filepaths: list[str], *, partial: bool = False) -> np.ndarray:
    """The rows of ``predictions`` in the order of ``filepaths`` (the dataset's files); every file must
    have a row and, unless ``partial`` (a --limit'ed load), every row a file."""
    if predictions.keys is None:
        if len(predictions.probabilities) != len(filepaths):
            raise InputError(f"{predictions.source} has {len(predictions.probabilities)} rows, but the source has "
                             f"{len(filepaths)} images: an .npy's rows follow the CSV source's rows")
        return predictions.probabilities
    position = _positions(predictions, filepaths)
    lacking = [path for path in filepaths if path not in position]
    if lacking:
        raise InputError(f"{predictions.source} has no row for {len(lacking)} of the dataset's images "
                         f"(the first: {lacking[0]})")
    known = set(filepaths)
    matched = {row for path, row in position.items() if path in known}
    extra = [] if partial else [key for row, key in enumerate(predictions.keys) if row not in matched]
    if extra:
        raise InputError(f"{predictions.source} has rows for {len(extra)} files the dataset lacks (the first: {extra[0]})")
    return predictions.probabilities[[position[path] for path in filepaths]]


def check_labels(predictions: GivenPredictions, labels) -> None:
    """Every label of the dataset must be one of the predictions' classes."""
    unknown = sorted({label for label in labels if label is not None} - set(predictions.classes))
    if unknown:
        named = ", ".join(f"'{label}'" for label in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise InputError(f"{predictions.source}: {len(unknown)} of the dataset's labels are not among its classes "
                         f"({named}); its classes: {', '.join(predictions.classes[:10])}"
                         f"{' ...' if len(predictions.classes) > 10 else ''}")


def in_sample_share(probabilities: np.ndarray, label_indices: list[int | None]) -> float:
    """The share of labelled samples whose label is the top class at MEMORISED_PROB or more: near 1
    for predictions made by a model trained on these labels (it has memorised them)."""
    rows, chosen = _labelled(label_indices)
    if len(rows) == 0:
        return 0.0
    top = probabilities[rows].argmax(axis=1) == chosen
    return float(np.mean(top & (probabilities[rows, chosen] >= MEMORISED_PROB)))


def _difference(have: tuple[str, ...], want: tuple[str, ...]) -> str:
    extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
    parts = ([f"not in --classes: {', '.join(extra[:5])}"] if extra else []) + \
        ([f"missing: {', '.join(missing[:5])}"] if missing else [])
    return "; ".join(parts)


def _positions(predictions: GivenPredictions, filepaths: list[str]) -> dict[str, int]:
    """Dataset file -> its row of ``predictions``. A row's path is absolute, or relative to the
    predictions file's folder, or else the end of one dataset file's path (written as in the labels
    CSV, relative to its folder): ``images/00007.jpg`` names ``/data/cifar/images/00007.jpg``."""
    known = set(filepaths)
    base = Path(predictions.source).parent
    by_tail: dict[int, dict[str, str | None]] = {}
    position = {}
    for row, key in enumerate(predictions.keys):
        path = absolute_path(base / key)
        if path not in known and not Path(key).is_absolute():
            depth = len(Path(key).parts)
            if depth not in by_tail:
                tails: dict[str, str | None] = {}
                for filepath in filepaths:
                    tail = "/".join(Path(filepath).parts[-depth:])
                    tails[tail] = None if tail in tails else filepath  # None: two files end alike
                by_tail[depth] = tails
            path = by_tail[depth].get("/".join(Path(key).parts)) or path
        position[path] = row
    return position


def _labelled(label_indices: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """(the rows with a label among the classes, that label's column in each)."""
    rows = [row for row, index in enumerate(label_indices) if index is not None]
    return np.array(rows, dtype=np.int64), np.array([label_indices[row] for row in rows], dtype=np.int64)


def _first_repeat(keys: list[str]) -> str | None:
    seen = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


def check_records(predictions: GivenPredictions, records: list[Record], *, partial: bool = False) -> GivenPredictions:
    """Check the predictions against a source's records before they are ingested (nothing written yet);
    an .npy's rows are named after the records they follow. Returns the predictions, keyed by file."""
    filepaths = [record.filepath for record in records]
    rows_for(predictions, filepaths, partial=partial)
    if predictions.keys is None:
        predictions = replace(predictions, keys=filepaths)
    check_labels(predictions, [record.label for record in records])
    return predictions


def attach(dataset, predictions: GivenPredictions, *, partial: bool = False) -> dict:
    """Store the predictions on the dataset's samples (``given_probabilities``, in ``classes`` order) and
    what they are in ``dataset.info["audit"]["predictions"]``; returns that record."""
    field = db.label_field(dataset)
    ids, filepaths, labels = dataset.values(["id", "filepath", f"{field}.label"])
    rows = rows_for(predictions, filepaths, partial=partial)
    check_labels(predictions, labels)
    index = {name: i for i, name in enumerate(predictions.classes)}
    share = in_sample_share(rows, [index.get(label) for label in labels])
    if not dataset.has_sample_field(names.GIVEN_PROBABILITIES):
        dataset.add_sample_field(names.GIVEN_PROBABILITIES, db.fo.VectorField)
    dataset.set_values(names.GIVEN_PROBABILITIES, dict(zip(ids, rows)), key_field="id")
    record = {"source": predictions.source, "described": predictions.describe(), "classes": list(predictions.classes),
              "sha256": hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()[:16],
              "from_logits": predictions.from_logits,
              "in_sample_share": round(share, 4), "in_sample": share >= MEMORISED_SHARE}
    db.save_audit_info(dataset, predictions=record)
    return record


def weigh_model(given: np.ndarray, model: np.ndarray, label_indices: list[int | None]) -> tuple[np.ndarray, float]:
    """The given probabilities with the explaining model's own weighed in, where its head knows the
    labels (your classifier, with ``--predictions`` too): a * p + (1 - a) * p(model), ``model`` its
    probabilities over the given classes (the whole image averaged with its mirror image where the
    scan asked for one), at the share ``a`` (0 to 1 by tenths) under which the labels are most likely;
    1 where the model adds nothing. On cifar10n-dev, ResNet-18's out-of-fold probabilities with the
    user's fine-tuned Lite0: ``a`` = 0.7, AP 0.888 -> 0.905 and triage AUROC 0.876 -> 0.899 (majority
    labels); ``a`` = 0.8, AP 0.966 -> 0.980 (worst labels)."""
    return _most_likely_mix(given, model, label_indices)


def smooth(given: np.ndarray, neighbour_rows: np.ndarray, label_indices: list[int | None]) -> tuple[np.ndarray, float]:
    """The given probabilities with their neighbours' weighed in: each sample's distribution
    mixed with the mean of its nearest neighbours' in the model's embedding space (``neighbour_rows``),
    a * p + (1 - a) * mean(p of the neighbours), at the share ``a`` (0 to 1 by tenths) under which the
    labels are most likely. Where the neighbours add nothing, ``a`` is 1 and the given probabilities
    stand alone. On cifar10n-dev (five models' out-of-fold probabilities, EfficientNet-Lite0's
    embeddings): ``a`` = 1 on every model with the majority labels; 0.8 to 1 with the worst labels,
    where it raises the AP of every model (ResNet-18 0.963 -> 0.966). A head fitted on the embeddings
    and multiplied in at the weight that makes the labels most likely lowered the AP instead
    (0.888 -> 0.885), as did any fixed share (0.883 at one part in five)."""
    if neighbour_rows.shape[1] == 0:
        return given, 1.0
    return _most_likely_mix(given, given[neighbour_rows].mean(axis=1), label_indices)


def _most_likely_mix(given: np.ndarray, other: np.ndarray, label_indices: list[int | None]) -> tuple[np.ndarray, float]:
    """a * given + (1 - a) * other at the share ``a`` of SHARES under which the labels are most
    likely (the mean log-probability of each labelled sample's label), and ``a``."""
    rows, chosen = _labelled(label_indices)
    if len(rows) == 0:
        return given, 1.0

    def negative_log_likelihood(share: float) -> float:
        mixed = share * given[rows, chosen] + (1 - share) * other[rows, chosen]
        return float(-np.mean(np.log(np.clip(mixed, 1e-9, 1.0))))

    losses = {share: negative_log_likelihood(share) for share in SHARES}
    least = min(losses.values())
    share = max(share for share, loss in losses.items() if loss <= least + TIE)  # a tie keeps the given ones
    return (share * given + (1 - share) * other).astype(np.float32), float(share)


def weighed_in(head: dict) -> str:
    """What the given probabilities were mixed with, in words for the summary line and the report
    (empty where they stand alone): the shares `weigh_model` and `smooth` chose."""
    parts = [f"{what} at {1 - head[key]:.0%}" for key, what in (("given_share_against_model", "the model's own"),
                                                               ("given_share", "their neighbours'"))
             if head.get(key) is not None and head[key] < 1]
    return f", weighed with {' and '.join(parts)}" if parts else ""


def label_quantiles(probabilities: np.ndarray, label_indices: list[int | None]) -> np.ndarray:
    """`standing_quantiles` of each sample's label under ``probabilities`` (NaN where unlabelled)."""
    quantiles = np.full(len(probabilities), np.nan)
    rows, chosen = _labelled(label_indices)
    if len(rows) == 0:
        return quantiles
    p = probabilities[rows]
    given = p[np.arange(len(rows)), chosen]
    others = p.copy()
    others[np.arange(len(rows)), chosen] = -1.0
    quantiles[rows] = standing_quantiles(given, others.max(axis=1))
    return quantiles


def standing_quantiles(given_prob: np.ndarray, max_other_prob: np.ndarray, *, margin_share: float = 0.5) -> np.ndarray:
    """Per sample, how suspect its label is against the others', in [0, 1] (1 = the most suspect):
    its rank by cleanlab's self-confidence (1 - p(label)) and, at ``margin_share``, by the normalised
    margin (p(label) - max p(other)), over the dataset. For out-of-fold predictions the two at equal
    shares: on cifar10n-dev's five models and two label sets the mean rank ranks the wrong labels at
    least as well as the better of the two in 9 of 10 (the tenth 0.001 below), where each alone falls
    behind the other on one label set (ResNet-18: self-confidence 0.888 / 0.957, normalised margin
    0.866 / 0.961, the mean rank 0.888 / 0.963)."""
    from scipy.stats import rankdata

    mean_rank = ((1 - margin_share) * rankdata(1.0 - given_prob) + margin_share * rankdata(max_other_prob - given_prob))
    return (mean_rank - 1.0) / max(len(mean_rank) - 1, 1)
