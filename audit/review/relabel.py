"""Apply corrected labels: from an edited relabel list (csv, json, jsonl; Label Studio exports too)
or from the marks made in the App. The original label is kept, never lost.

What changes on a relabelled sample:

- the label field (``ground_truth`` unless the dataset says otherwise) holds the new label, as a
  Classification with the ImageNet display name, WordNet id and class index when the dataset's
  labels are ImageNet classes;
- ``ground_truth_original`` (``<label field>_original``) holds the label as it was before the first
  relabel, and is never overwritten;
- ``relabel_history`` gains ``{"from", "to", "who", "when", "source"}``;
- the sample is tagged ``relabeled`` and judged at once for its new label from the whole image's
  stored probabilities (``audit.score.policy.for_new_label``); its ``audit_done`` marker is cleared, so that
  the next ``audit scan`` judges it again on every view.

Everything is validated before anything is written: a file with one bad row changes nothing (unless
``skip_invalid``), and a row whose label already holds changes nothing, so applying the same file
twice is a no-op.
"""

from __future__ import annotations

import csv
import difflib
import getpass
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from audit import names
from audit.data.classes import imagenet_names, resolve_imagenet_label
from audit.data.ingest import ground_truth_label
from audit.errors import AuditError
from audit.heads.choice import FIT, head_kind
from audit.review.labelstudio import labelstudio_answer
from audit.score.triage import rescore
from audit.store import db
from audit.store.lock import LockError, ScanLock

APP_MARKS = "app-marks"  # the ``source`` of changes applied from the App's marks


class RelabelError(AuditError):
    """The corrections cannot be applied; one line (the per-row problems are in ``problems``)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


def original_field(dataset) -> str:
    return f"{db.label_field(dataset)}{names.ORIGINAL_SUFFIX}"


@dataclass
class Correction:
    """One row of a relabel list: where it came from, which sample, the new label."""

    where: str  # "file.csv:12", for messages
    new_label: str
    sample_id: str | None = None
    filepath: str | None = None


@dataclass
class RelabelResult:
    changed: list[dict] = field(default_factory=list)  # {"sample_id", "filepath", "from", "to"}
    unchanged: int = 0  # rows whose sample already has that label
    skipped: int = 0  # rows with an empty new_label
    problems: list[str] = field(default_factory=list)
    applied: bool = False


# ---------------------------------------------------------------------------------------- reading


def read_corrections(path: Path) -> tuple[list[Correction], int]:
    """The rows of a relabel list that set a new label, and how many rows left it empty. Reads the
    export formats (csv, json, jsonl: ``new_label`` with ``sample_id`` and/or ``filepath``) and Label
    Studio's exports of our tasks (JSON with annotations, JSON-MIN, CSV: the choice ``new_label``,
    or the free text ``new_label_other`` when filled in)."""
    path = Path(path)
    if not path.is_file():
        raise RelabelError(f"file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            rows = [(f"{path.name}:{line}", row) for line, row in enumerate(csv.DictReader(text.splitlines()), 2)]
        elif suffix == ".jsonl":
            rows = [(f"{path.name}:{line}", json.loads(raw)) for line, raw in enumerate(text.splitlines(), 1)
                    if raw.strip()]
        else:
            loaded = json.loads(text)
            if isinstance(loaded, dict):
                loaded = [loaded]
            if not isinstance(loaded, list):
                raise RelabelError(f"{path}: expected a JSON list of rows")
            rows = [(f"{path.name}[{index}]", row) for index, row in enumerate(loaded)]
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as error:
        raise RelabelError(f"{path} is not a valid {suffix.lstrip('.') or 'json'} relabel list: {error}") from None
    corrections, empty = [], 0
    if rows and not any(isinstance(row, dict) and {"new_label", "new_label_other", "annotations"} & set(row)
                        for _, row in rows):
        raise RelabelError(f"{path} has no new_label column: is it a relabel list from `audit export`?")
    for where, row in rows:
        if not isinstance(row, dict):
            raise RelabelError(f"{where}: a row must be an object with sample_id/filepath and new_label")
        if "data" in row and "annotations" in row:  # Label Studio's full JSON export
            row = {**row["data"], **labelstudio_answer(row)}
        new_label = _text(row.get("new_label_other")) or _choice(row.get("new_label"))
        if not new_label:
            empty += 1
            continue
        corrections.append(Correction(where, new_label, _text(row.get("sample_id")), _text(row.get("filepath"))))
    return corrections, empty


def _text(value) -> str | None:
    return str(value).strip() or None if value is not None else None


def _choice(value) -> str | None:
    """A label: a plain string, or Label Studio's single choice ({"choices": [...]} or a list)."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    return _text(value)


# ------------------------------------------------------------------------------------- validation


class LabelChecker:
    """Resolves a reviewer's label to the label to store, or says why it cannot.

    When the dataset's labels are ImageNet classes (most of its distinct labels resolve), a new label
    must name an ImageNet class (any synonym, a WordNet id or an index) and is stored under its display
    name; otherwise it must be one of the labels the dataset already uses, unless ``allow_new_labels``."""

    def __init__(self, dataset, allow_new_labels: bool = False):
        label = db.label_field(dataset)
        known = {v for v in dataset.distinct(f"{label}.label") if v}
        if dataset.has_sample_field(original_field(dataset)):
            known |= {v for v in dataset.distinct(f"{original_field(dataset)}.label") if v}
        resolved = sum(resolve_imagenet_label(v) is not None for v in known)
        self.imagenet = bool(known) and resolved >= 0.5 * len(known)
        self.known = known
        self.allow_new_labels = allow_new_labels

    def resolve(self, text: str) -> tuple[str | None, str | None]:
        """(label to store, None) or (None, why not)."""
        if self.imagenet:
            index = resolve_imagenet_label(text)
            if index is None:
                return None, f"'{text}' is not an ImageNet class{self._hint(text, imagenet_names())}"
            return imagenet_names()[index], None
        if text in self.known or self.allow_new_labels:
            return text, None
        return None, (f"'{text}' is not a label of this dataset{self._hint(text, self.known)}"
                      " (--allow-new-labels to add it)")

    @staticmethod
    def _hint(text: str, choices) -> str:
        close = difflib.get_close_matches(text.lower(), {c.lower(): c for c in choices}, n=1, cutoff=0.75)
        if close:
            original = {c.lower(): c for c in choices}[close[0]]
            return f" (did you mean '{original}'?)"
        return ""


@dataclass
class _Plan:
    changes: dict[str, str] = field(default_factory=dict)  # sample id -> label to store
    matched: set[str] = field(default_factory=set)  # samples whose correction is valid (changed or not)
    imagenet: bool = False
    result: RelabelResult = field(default_factory=RelabelResult)


def plan(dataset, corrections: list[Correction], allow_new_labels: bool = False) -> _Plan:
    """Match every correction to a sample (by sample_id, else filepath) and resolve its label;
    collect every problem instead of stopping at the first."""
    label = db.label_field(dataset)
    ids, filepaths, current = dataset.values(["id", "filepath", f"{label}.label"])
    by_id = dict(zip(ids, current))
    path_to_id = {}
    for sample_id, path in zip(ids, filepaths):
        path_to_id[path] = sample_id
        path_to_id.setdefault(str(Path(path).resolve()), sample_id)
    checker = LabelChecker(dataset, allow_new_labels)
    result = _Plan(imagenet=checker.imagenet)
    wanted: dict[str, tuple[str, str]] = {}  # sample id -> (label, where)
    for correction in corrections:
        sample_id = correction.sample_id if correction.sample_id in by_id else None
        if sample_id is None and correction.filepath:
            sample_id = path_to_id.get(correction.filepath) or path_to_id.get(str(Path(correction.filepath).resolve()))
        if sample_id is None:
            named = correction.sample_id or correction.filepath or "no sample_id or filepath"
            result.result.problems.append(f"{correction.where}: no sample {named} in '{dataset.name}'")
            continue
        new_label, why = checker.resolve(correction.new_label)
        if why:
            result.result.problems.append(f"{correction.where}: {why}")
            continue
        if sample_id in wanted and wanted[sample_id][0] != new_label:
            result.result.problems.append(f"{correction.where}: the sample of {wanted[sample_id][1]} again, with "
                                          f"'{new_label}' instead of '{wanted[sample_id][0]}'")
            continue
        wanted[sample_id] = (new_label, correction.where)
    result.matched = set(wanted)
    for sample_id, (new_label, _) in wanted.items():
        if by_id[sample_id] == new_label:
            result.result.unchanged += 1
        else:
            result.changes[sample_id] = new_label
    return result


# ---------------------------------------------------------------------------------------- writing


def _apply(dataset, changes: dict[str, str], source: str, imagenet: bool) -> list[dict]:
    """Write the planned changes in bulk: originals first (only where none is kept yet), then the
    history, then the labels, then the tags and the cleared scan markers."""
    if not changes:
        return []
    fo = db.fo
    label = db.label_field(dataset)
    original = original_field(dataset)
    view = dataset.select(list(changes))
    ids, filepaths, labels = view.values(["id", "filepath", label])
    histories = view.values(names.HISTORY) if dataset.has_sample_field(names.HISTORY) else [None] * len(ids)
    originals = view.values(original) if dataset.has_sample_field(original) else [None] * len(ids)
    if not dataset.has_sample_field(original):
        dataset.add_sample_field(original, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    if not dataset.has_sample_field(names.HISTORY):
        dataset.add_sample_field(names.HISTORY, fo.ListField, subfield=fo.DictField)
    who, when = _who(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    keep, history, new_labels, changed = {}, {}, {}, []
    for sample_id, filepath, old, past, kept in zip(ids, filepaths, labels, histories, originals):
        old_text = old.label if old is not None else None
        if not past and kept is None and old is not None:
            keep[sample_id] = old.copy()
        entry = {"from": old_text, "to": changes[sample_id], "who": who, "when": when, "source": source}
        history[sample_id] = list(past or []) + [entry]
        new_labels[sample_id] = (ground_truth_label(changes[sample_id]) if imagenet
                                 else fo.Classification(label=changes[sample_id]))
        changed.append({"sample_id": sample_id, "filepath": filepath, "from": old_text, "to": changes[sample_id]})
    if keep:
        dataset.set_values(original, keep, key_field="id")
    dataset.set_values(names.HISTORY, history, key_field="id")
    dataset.set_values(label, new_labels, key_field="id")
    view.tag_samples(names.RELABELED_TAG)
    # With the model's head the first phase judged the old label: redone at the next scan. A fitted
    # head's first phase reads no label, so only the second (the refit) is redone, with no network pass.
    if dataset.has_sample_field(names.DONE) and head_kind(dataset) != FIT:
        dataset.set_values(names.DONE, {sample_id: None for sample_id in changes}, key_field="id")
    return changed


def _would_change(dataset, changes: dict[str, str]) -> list[dict]:
    """The planned changes as `_apply` reports them ({"sample_id", "filepath", "from", "to"}), nothing written."""
    if not changes:
        return []
    ids, filepaths, labels = dataset.select(list(changes)).values(["id", "filepath", f"{db.label_field(dataset)}.label"])
    return [{"sample_id": i, "filepath": path, "from": old, "to": changes[i]}
            for i, path, old in zip(ids, filepaths, labels)]


@contextmanager
def _no_scan_running(dataset, writing: bool = True):
    """Hold the dataset's scan lock while corrections are written (when there are any). A scan in
    progress has read the labels it judges and would mark its samples done against the old ones, so
    a relabel during a scan is refused, nothing written; and no scan starts during a relabel."""
    if not writing:
        yield
        return
    try:
        lock = ScanLock(dataset._root_dataset.name, doing="relabelled").acquire()
    except LockError as refusal:
        raise RelabelError(f"nothing relabelled: {refusal}") from None
    try:
        yield
    finally:
        lock.release()


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (some containers)
        return "unknown"


def relabel_from_file(dataset, path: Path, *, allow_new_labels: bool = False, skip_invalid: bool = False,
                      dry_run: bool = False) -> RelabelResult:
    """Apply the corrected labels of a relabel list. With problems and not ``skip_invalid``, nothing
    is written and ``result.problems`` says why (``applied`` False)."""
    path = Path(path).resolve()
    corrections, empty = read_corrections(path)
    return _relabel(dataset, corrections, empty, str(path), allow_new_labels, skip_invalid, dry_run)


def _relabel(dataset, corrections, skipped: int, source: str, allow_new_labels: bool, skip_invalid: bool,
             dry_run: bool, after_apply=None) -> RelabelResult:
    """Plan the corrections and, unless a dry run or (without ``skip_invalid``) a problem stops it,
    apply them under the scan lock; ``after_apply(planned)`` then updates every matched sample
    (changed or not) under the same lock."""
    planned = plan(dataset, corrections, allow_new_labels)
    result = planned.result
    result.skipped = skipped
    if dry_run or (result.problems and not skip_invalid):
        result.changed = _would_change(dataset, planned.changes)
        return result
    with _no_scan_running(dataset, bool(planned.matched if after_apply else planned.changes)):
        result.changed = _apply(dataset, planned.changes, source, planned.imagenet)
        if after_apply:
            after_apply(planned)
        # no stale verdict: judged at once for the new label (see audit.score.policy.for_new_label)
        if result.changed and dataset.has_sample_field(names.SIGNALS):
            rescore(dataset, sample_ids=[change["sample_id"] for change in result.changed])
    result.applied = True
    return result


# ------------------------------------------------------------------------------------------ marks


def mark_samples(dataset, sample_ids: list[str], verdict: str, *, new_label: str | None = None,
                 allow_new_labels: bool = False) -> int:
    """Mark samples as reviewed in the App: ``relabel`` (with the corrected label, when given) or
    ``label_ok``. A corrected label is checked like a file's. Returns how many samples were marked."""
    if verdict not in (names.RELABEL_TAG, names.OK_TAG):
        raise RelabelError(f"unknown mark '{verdict}': use {names.RELABEL_TAG} or {names.OK_TAG}")
    if not sample_ids:
        return 0
    view = dataset.select(sample_ids)
    if not dataset.has_sample_field(names.RELABEL_TO):
        dataset.add_sample_field(names.RELABEL_TO, db.fo.StringField)
    if verdict == names.OK_TAG:
        view.untag_samples(names.RELABEL_TAG)
        view.tag_samples(names.OK_TAG)
        view.set_field(names.RELABEL_TO, None).save(names.RELABEL_TO)
        return len(view)
    if new_label:
        resolved, why = LabelChecker(dataset, allow_new_labels).resolve(new_label.strip())
        if why:
            raise RelabelError(why)
        view.set_field(names.RELABEL_TO, resolved).save(names.RELABEL_TO)
    view.untag_samples(names.OK_TAG)
    view.tag_samples(names.RELABEL_TAG)
    return len(view)


def marked_corrections(dataset) -> tuple[list[Correction], int]:
    """The App's ``relabel`` marks as corrections, and how many of them have no corrected label yet."""
    if not dataset.has_sample_field(names.RELABEL_TO):
        return [], len(dataset.match_tags(names.RELABEL_TAG))
    marked = dataset.match_tags(names.RELABEL_TAG)
    ids, targets = marked.values(["id", names.RELABEL_TO])
    corrections = [Correction(f"marked sample {i}", t, sample_id=i) for i, t in zip(ids, targets) if t]
    return corrections, sum(1 for t in targets if not t)


def relabel_from_marks(dataset, *, allow_new_labels: bool = False, skip_invalid: bool = False,
                       dry_run: bool = False) -> RelabelResult:
    """Apply the corrected labels marked in the App (tag ``relabel`` + ``relabel_to``); applied marks
    become the tag ``relabeled``. Samples marked without a corrected label are counted in ``skipped``."""
    corrections, without = marked_corrections(dataset)

    def clear_applied_marks(planned) -> None:
        if planned.matched:
            applied = dataset.select(list(planned.matched))
            applied.untag_samples(names.RELABEL_TAG)
            applied.set_field(names.RELABEL_TO, None).save(names.RELABEL_TO)

    return _relabel(dataset, corrections, without, APP_MARKS, allow_new_labels, skip_invalid, dry_run,
                    clear_applied_marks)


def marks_summary(dataset) -> dict[str, int]:
    """How many samples carry each review mark."""
    counts = Counter()
    for tags in dataset.values("tags"):
        for tag in tags:
            if tag in (names.RELABEL_TAG, names.OK_TAG, names.RELABELED_TAG):
                counts[tag] += 1
    return {tag: counts.get(tag, 0) for tag in (names.RELABEL_TAG, names.OK_TAG, names.RELABELED_TAG)}
