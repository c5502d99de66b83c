"""The audit of a dataset, put together once: load the source (under the dataset's ingest lock),
scan it with the models (under its scan lock), then score every sample. The CLI, the App's plugin
and the benchmarks all call these two functions; nothing else strings the steps together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from audit.data import default_name, open_source
from audit.heads import given as given_head
from audit.models.own import read_class_names
from audit.models.registry import AuditModel
from audit.names import GROUND_TRUTH
from audit.scan.options import ScanOptions, ScanSummary
from audit.scan.run import scan
from audit.score.triage import ScoringSummary, rescore
from audit.store.lock import ScanLock


@dataclass(frozen=True)
class SourceRequest:
    """What to load: a source (``imagenet-val``, ``folder``, ``csv``, ``fiftyone``, ``sample``) and how to read it."""

    source: str
    root: str | None = None
    name: str | None = None  # the dataset's name (default: the source's, see `audit.data.default_name`)
    labels: str | None = None  # folder: a CSV of labels for a flat folder
    label_field: str = GROUND_TRUTH  # fiftyone: the field holding the labels
    layout: str | None = None  # imagenet-val: force a layout
    limit: int | None = None
    boxes: str | None = None  # imagenet-val: the folder of the box files
    predictions: str | None = None  # the user's predictions: a CSV or .npy file, or (fiftyone) a field with logits
    classes: str | None = None  # the classes file naming an .npy's columns (or a field's logits)


@dataclass(frozen=True)
class AuditResult:
    """A finished (or interrupted) audit: the scan's counts, and the scoring's (None when interrupted)."""

    scan: ScanSummary
    scoring: ScoringSummary | None


def load_source(request: SourceRequest, *, warn: Callable[[str], None] = print,
                on_wait: Callable[[str], None] | None = None):
    """The persistent dataset of ``request``, with what is new ingested; returns (dataset, added).
    Two loads of one source wait for each other (``on_wait`` hears why), then the second adds nothing.
    ``request.predictions`` are read, checked against the source's rows before anything is ingested
    (one line, `audit.errors.InputError`, when they do not fit) and stored on its samples (`audit.heads.given`)."""
    name = request.name or default_name(request.source, request.root)
    classes = read_class_names(Path(request.classes)) if request.classes else None
    given = _given_file(request, classes)
    checked = {}

    def check(records):  # before anything is ingested: predictions that do not fit are refused
        checked["predictions"] = given_head.check_records(given, records, partial=request.limit is not None)

    with ScanLock(name, kind="ingest", wait=True, on_wait=on_wait):
        dataset, added = open_source(request.source, root=request.root, name=request.name, labels=request.labels,
                                     label_field=request.label_field, layout=request.layout, limit=request.limit,
                                     warn=warn, boxes=request.boxes, check=check if given else None)
        if request.predictions:
            predictions = checked.get("predictions") or given or \
                given_head.field_predictions(dataset, request.predictions, classes=classes)
            record = given_head.attach(dataset, predictions, partial=request.limit is not None)
            if record["in_sample"]:
                warn(f"{predictions.source} looks made in sample: {record['in_sample_share']:.0%} of the labels "
                     "are its top class at 0.95 or more, as from a model trained on these labels, which cannot see "
                     "their errors; give out-of-fold predictions (cross-validation), or use --head fit")
    return dataset, added


def _given_file(request: SourceRequest, classes: tuple[str, ...] | None) -> given_head.GivenPredictions | None:
    """The predictions file of ``request`` read and checked on its own (None for a field's or none)."""
    if not request.predictions or (request.source == "fiftyone" and not Path(request.predictions).is_file()):
        return None
    return given_head.read_predictions(Path(request.predictions), classes=classes)


def audit_dataset(dataset, models: list[AuditModel], *, options: ScanOptions | None = None,
                  progress=None) -> AuditResult:
    """Scan ``dataset`` (a dataset or a view) with ``models`` and score every sample of its dataset.
    Raises `audit.store.lock.LockError` when another scan of it runs; Ctrl-C saves what is done and returns
    an interrupted result, which the same call resumes."""
    summary = scan(dataset, models, options=options or ScanOptions(), progress=progress)
    scoring = None if summary.interrupted else summary.scoring or rescore(dataset._root_dataset)
    return AuditResult(summary, scoring)


class ImagesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:.1f} img/s")


def scan_progress(console: Console | None = None) -> Progress:
    """The progress display the CLI shows, to pass as ``progress``: each stage with its bar, count,
    images per second and time left (on ``console``, default stderr)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), ImagesPerSecond(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console or Console(stderr=True))
