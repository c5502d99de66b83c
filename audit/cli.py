"""The `audit` command line: parse, call the library, print. No logic of its own.

Each command imports the library inside its function: `audit --help` and a mistyped option answer at
once, without loading torch and FiftyOne."""

from __future__ import annotations

import json
import sys
import traceback
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from audit import names, settings
from audit.errors import AuditError, InputError, OptionError

app = typer.Typer(help="Find label errors and classifier failures in image datasets (Eigen-CAM + FiftyOne).",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
out = Console()
err = Console(stderr=True)
for console in (out, err):
    if not console.is_terminal:  # piped or captured: room for the reasons column
        console.width = max(console.width, 160)
DEBUG = {"on": False}


class Source(str, Enum):
    imagenet_val = "imagenet-val"
    folder = "folder"
    csv = "csv"
    fiftyone = "fiftyone"
    sample = "sample"


class ExportFormat(str, Enum):
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    labelstudio = "labelstudio"


def command(function):
    """Every command: a known failure is one line on stderr and exit 1, a file that does not fit exit 2
    (the traceback with --debug)."""

    @wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (typer.Exit, typer.BadParameter):  # a usage error: printed with the usage, exit status 2
            raise
        except OptionError as error:
            raise typer.BadParameter(str(error), param_hint=error.option) from None
        except InputError as error:  # a file that does not fit: refused before anything was written
            err.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            hint = "; run the same command again to resume" if function.__name__ == "scan" else ""
            err.print(f"interrupted{hint}", markup=False, highlight=False)
            raise typer.Exit(130) from None
        except Exception as error:
            if DEBUG["on"]:
                traceback.print_exc()
            known = isinstance(error, (AuditError, OSError))  # said in one line; anything else names its type
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            err.print(f"error: {message}" if known else f"error: {type(error).__name__}: {message}",
                      markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return run


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    DEBUG["on"] = debug


@app.command()
@command
def scan(
    source: Annotated[Source, typer.Argument(help="imagenet-val | folder | csv | fiftyone | sample")],
    root: Annotated[Optional[str], typer.Option(help="Folder, CSV file or dataset name the source reads.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Dataset name (default: the source's name).")] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        help="Model name (`audit models`); repeat it for an ensemble.")] = None,
    models: Annotated[Optional[str], typer.Option(
        "--models", help="A preset ensemble: 'lite' = efficientnet_lite0, _lite1 and _lite2.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local state dict (.pth/.safetensors) for the model.")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Module to explain (default: the last spatial feature map).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = settings.DEFAULT_BATCH_SIZE,
    workers: Annotated[Optional[int], typer.Option(
        min=0, help="Decoding processes (default: cores - 1 on a GPU, a core in four on a CPU).")] = None,
    amp: Annotated[Optional[bool], typer.Option(
        "--amp/--no-amp", help="Mixed precision for the model (default: on CUDA only).", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Load and scan at most N samples.")] = None,
    shard: Annotated[str, typer.Option(help="I/N: scan the I-th (1..N) of N deterministic parts.")] = "1/1",
    restart: Annotated[bool, typer.Option(help="Redo samples already scanned.")] = False,
    second_opinion: Annotated[bool, typer.Option(
        help="Classify the mirror image and the object crops of the samples in doubt "
             "(with a fitted head: the mirror image of the top-ranked tenth).")] = True,
    class_maps: Annotated[bool, typer.Option(help="Grad-CAM maps of the predicted and the given class.")] = True,
    all_boxes: Annotated[bool, typer.Option(
        help="A box for every large Eigen-CAM segment (several objects), not only the largest.")] = False,
    labels: Annotated[Optional[Path], typer.Option(help="folder: CSV (filepath,label) for a flat folder.")] = None,
    label_field: Annotated[str, typer.Option(help="fiftyone: the field holding the labels.")] = names.GROUND_TRUTH,
    layout: Annotated[Optional[str], typer.Option(
        help="imagenet-val: force a layout (archives | extracted | kaggle | folders).")] = None,
    boxes: Annotated[Optional[Path], typer.Option(
        help="imagenet-val: the folder of the box files (<image>.xml), if not found under --root.")] = None,
    classes: Annotated[Optional[Path], typer.Option(
        help="Your model's class names, one a line in its head's order (also names an .npy's columns).")] = None,
    model_config: Annotated[Optional[Path], typer.Option(
        help="Your model's preprocessing (input_size, crop_pct, mean, std, interpolation) as JSON, as timm's "
             "config.json (default: config.json beside --weights).")] = None,
    predictions: Annotated[Optional[str], typer.Option(
        help="Your model's probabilities or logits: a CSV filepath,<class>,..., an .npy in the CSV source's row "
             "order (columns: --classes), or for a FiftyOne dataset a Classification field with logits.")] = None,
    head: Annotated[str, typer.Option(
        help="auto | model | fit | given: judge the labels with the model's classes, a head fitted on the "
             "dataset's own (5-fold, out-of-fold), or the --predictions (auto: given when there are predictions, "
             "fitted when a label is not one of the model's classes).")] = "auto",
    engine: Annotated[str, typer.Option(
        help="local | ray: this machine's processes, or a Ray cluster (pip install 'audit[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(
        help="ray: auto | HOST:PORT of the cluster (default: RAY_ADDRESS or a running cluster, else a local one).")] = None,
    actors: Annotated[str, typer.Option(
        help="ray: model replicas, N or auto (one per GPU; one per node without GPUs).")] = "auto",
    gpus_per_actor: Annotated[Optional[float], typer.Option(
        min=0, help="ray: GPUs per model replica (default: 1 where the cluster has GPUs, else 0).")] = None,
) -> None:
    """Load SOURCE into FiftyOne, run the model once, attach predictions, Eigen-CAM maps and boxes,
    and rank the samples. Resumes by default: samples scanned with the same settings are skipped."""
    from audit.data.imagenet import LAYOUTS
    from audit.models.registry import load_models, model_names
    from audit.pipeline import SourceRequest, audit_dataset, load_source, scan_progress
    from audit.scan.options import ScanOptions

    if classes is not None and weights is None and predictions is None:
        raise typer.BadParameter("it names your model's head (with --weights) or an .npy's columns (with "
                                 "--predictions)", param_hint="--classes")
    if layout is not None and layout not in LAYOUTS:
        raise typer.BadParameter(f"'{layout}' is not one of {', '.join(LAYOUTS)}", param_hint="--layout")
    options = ScanOptions(batch_size=batch_size, workers=workers, limit=limit, shard=_parse_shard(shard),
                          restart=restart, amp=amp, second_opinion=second_opinion, class_maps=class_maps,
                          all_boxes=all_boxes, head=head, engine=engine,
                          cluster=_cluster_options(engine, shard, address, actors, gpus_per_actor))
    loaded = load_models(model_names(model, preset=models), weights=weights, layer=layer, device=device,
                         classes=classes if weights else None, config=model_config)
    request = SourceRequest(source.value, root, name, str(labels) if labels else None, label_field, layout, limit,
                            str(boxes) if boxes else None, predictions, str(classes) if classes else None)
    warnings: list[str] = []
    dataset, added = load_source(request, warn=warnings.append, on_wait=lambda why: _say(f"waiting: {why}"))
    _print_loaded(dataset, added, warnings, loaded, predictions is not None)
    with scan_progress(err) as progress:
        result = audit_dataset(dataset, loaded, options=options, progress=progress)
    if result.scoring is None:
        _say(f"interrupted: {result.scan.scanned} samples saved; run the same command again to resume")
        raise typer.Exit(130)
    _print_scanned(dataset, result)
    _print_table(dataset, top=20)


def _say(line: str) -> None:
    """One line on stderr, exactly as given (paths and file:line stay greppable)."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def _print_loaded(dataset, added: int, warnings: list[str], models, predictions: bool) -> None:
    from audit.store import db

    for warning in warnings[:20]:
        _say(f"warning: {warning}")
    if len(warnings) > 20:
        _say(f"warning: … and {len(warnings) - 20} more")
    with_boxes = len(dataset.exists(names.GT_BOXES)) if dataset.has_sample_field(names.GT_BOXES) else 0
    _say(f"dataset '{dataset.name}': {len(dataset)} samples ({added} new), {with_boxes} with boxes")
    for each in models:
        own = f", {len(each.classes)} classes" if not each.is_imagenet else ""
        config = f" ({each.config})" if each.config else ""
        _say(f"model {each.name} on {each.device}: layer '{each.target_layer}', {each.preprocess.describe()}{config}{own}")
    if predictions:
        _say(f"predictions: {db.audit_info(dataset)['predictions']['described']}")


def _print_scanned(dataset, result) -> None:
    from audit.heads.choice import GIVEN
    from audit.heads.given import weighed_in
    from audit.store import db

    summary, scoring = result.scan, result.scoring
    _say(f"scanned {summary.scanned}, already done {summary.skipped}, unreadable {summary.unreadable}; "
         + ", ".join(f"{c} {n}" for c, n in sorted(scoring.counts.items())))
    if summary.head is not None:
        again = f", the top {summary.examined} examined again" if summary.examined else ""
        weighed = weighed_in(db.audit_info(dataset)["head"]) if summary.head.kind == GIVEN else ""
        _say(f"head: {summary.head.kind} ({summary.head.why}{weighed}); second phase judged {summary.judged}{again} "
             f"in {summary.second_phase_seconds:.1f} s")
    if summary.unreadable:
        _say(f"{summary.unreadable} image(s) could not be read (category error, the reason in audit_error): "
             f"`audit rank {dataset.name} --category error` lists them")
    if scoring.label_errors is not None:
        _say(scoring.label_errors.line())
    if scoring.top1_agreement is not None:
        _say(f"top-1 accuracy against the given labels: {100 * scoring.top1_agreement:.1f} % "
             f"of {scoring.labelled} samples")


def _cluster_options(engine: str, shard: str, address: Optional[str], actors: str, gpus_per_actor: Optional[float]):
    from audit.scan.options import ENGINES, ClusterOptions

    if engine not in ENGINES:
        raise typer.BadParameter(f"'{engine}' is not one of {', '.join(ENGINES)}", param_hint="--engine")
    if engine == "ray":
        from audit.scan.ray_engine import import_ray

        import_ray()  # before anything is loaded: one line when Ray is missing
    if engine == "ray" and shard != "1/1":
        raise typer.BadParameter("--shard splits a scan between hand-started processes; --engine ray "
                                 "splits it across the cluster itself: use one of them", param_hint="--shard")
    if actors != "auto" and not (actors.isdigit() and int(actors) >= 1):
        raise typer.BadParameter(f"'{actors}' is not a number of actors (1 or more) or auto", param_hint="--actors")
    return ClusterOptions(address, None if actors == "auto" else int(actors), gpus_per_actor)


def _parse_shard(shard: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in shard.split("/"))
        if 1 <= index <= count:
            return index, count
    except ValueError:
        pass
    raise typer.BadParameter(f"'{shard}' is not I/N with 1 <= I <= N", param_hint="--shard")


@app.command()
@command
def rank(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    top: Annotated[int, typer.Option(min=1)] = 20,
    category: Annotated[Optional[str], typer.Option(help="Only this category.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
    rescore: Annotated[bool, typer.Option(help="Re-score from the stored signals first (no model).")] = False,
) -> None:
    """Show the flagged samples, highest mislabel_score first."""
    from audit.score.triage import rescore as run_rescore
    from audit.store import db

    dataset = db.load_dataset(name)
    _check_category(category)
    if rescore:
        run_rescore(dataset)
    if as_json:
        from audit.review.export import export_rows

        out.print_json(json.dumps(export_rows(dataset, category=category, top=top)))
    else:
        from audit.review.report import label_errors_line

        out.print(label_errors_line(dataset))
        _print_table(dataset, top, category)


def _check_category(category: Optional[str]) -> None:
    if category is not None and category not in names.CATEGORIES:
        raise typer.BadParameter(f"'{category}' is not one of {', '.join(names.CATEGORIES)}", param_hint="--category")


def _print_table(dataset, top: int, category: Optional[str] = None) -> None:
    from audit.score.triage import ranked_rows

    rows = ranked_rows(dataset, category=category, top=top)
    table = Table(title=f"{dataset.name}: flagged samples, most suspect first")
    for column, justify in (("rank", "right"), ("file", "left"), ("given", "left"), ("predicted", "left"),
                            ("conf", "right"), ("category", "left"), ("score", "right"), ("reasons", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for position, row in enumerate(rows, start=1):
        score = "" if row["mislabel_score"] is None else f"{row['mislabel_score']:.3f}"
        confidence = "" if row["predicted_confidence"] is None else f"{row['predicted_confidence']:.2f}"
        table.add_row(str(position), Path(row["filepath"]).name, row["given_label"] or "", row["predicted_label"] or "",
                      confidence, row["category"], score, "; ".join(row["reasons"] or []))
    if not rows:
        out.print(f"{dataset.name}: nothing flagged")
        return
    out.print(table)


@app.command()
@command
def export(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    out_path: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.csv,
    category: Annotated[Optional[str], typer.Option(help="Only this category.")] = None,
    top: Annotated[Optional[int], typer.Option(min=1, help="Only the first N.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every scanned sample, not only flagged ones.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    document_root: Annotated[Optional[Path], typer.Option(
        help="labelstudio: Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default: the folder above the images' "
             "common folder, which is the storage).")] = None,
) -> None:
    """Write the relabel list (highest mislabel_score first) with an empty new_label column.

    --format labelstudio writes Label Studio tasks instead (see docs/relabelling.md for the import)."""
    from audit.review.export import export_dataset
    from audit.store import db

    _check_category(category)
    dataset = db.load_dataset(name)
    exported = export_dataset(dataset, out_path, fmt=fmt.value, category=category, top=top, everything=everything,
                              overwrite=overwrite, document_root=document_root)
    err.print(f"wrote {exported.count} {'tasks' if exported.labelstudio else 'rows'} to {out_path}")
    if exported.labelstudio:
        folders = exported.labelstudio
        err.print(f"Label Studio: start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
                  f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={folders.document_root}, add a Local files storage with "
                  f"the absolute path {folders.storage} (no sync), then import {out_path}",
                  markup=False, highlight=False, soft_wrap=True)


@app.command("eval-loc")
@command
def eval_loc(
    name: Annotated[str, typer.Argument(help="Dataset name (with ground-truth boxes, gt_boxes).")],
    iou: Annotated[float, typer.Option(min=0.0, max=1.0, help="IoU a box needs with a ground-truth box.")] = 0.5,
    model: Annotated[str, typer.Option(help="Model to explain with.")] = names.DEFAULT_MODEL,
    weights: Annotated[Optional[Path], typer.Option(help="Local state dict for the model.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Weakly-supervised localization (the Eigen-CAM papers' protocol): GT-known and top-1
    localization error in % (lower is better) for Eigen-CAM, fused Eigen-CAM and Grad-CAM."""
    from audit.evaluate.localization import evaluate_localization
    from audit.models.registry import load_model
    from audit.pipeline import scan_progress
    from audit.store import db

    dataset = db.load_dataset(name)
    loaded = load_model(model, weights=weights, device=device)
    with scan_progress(err) as progress:
        report = evaluate_localization(dataset, loaded, iou=iou, progress=progress)
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table(title=f"{name}: localization error (%) of {report['n']} images, IoU >= {iou}; "
                        f"top-1 accuracy {report['top1_accuracy']:.1f} %")
    for column in ("map", "threshold", "GT-known", "top-1"):
        table.add_column(column, justify="left" if column == "map" else "right")
    for method, rows in report["sweep"].items():
        for threshold, figures in rows.items():
            table.add_row(method, threshold, f"{figures['gt_known_loc_error']:.1f}", f"{figures['top1_loc_error']:.1f}")
        table.add_section()
    out.print(table)


@app.command("eval-labels")
@command
def eval_labels(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    truth: Annotated[Path, typer.Option(help=(
        "Human verdicts: ImageId,verdict (verified_labels.csv; verified_labels_real.csv, with ReaL's "
        "multi-label images from real_labels.csv beside it) or filepath,label_error[,multi_label] (truth_*.csv)."))],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """How well mislabel_score ranks verified label errors first (AUROC, average precision,
    precision at 10/25/50), beside the probability-only baselines of the same scan; the estimate of
    wrong labels and the review queue against the truth; how often the
    suggested label is the humans' fix; how well `ambiguous` finds multi-label images."""
    from audit.evaluate.labels import evaluate_labels
    from audit.store import db

    report = evaluate_labels(db.load_dataset(name), truth)
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table(title=f"{name}: {report['n']} samples, {report['n_errors']} verified label errors")
    for column in ("ranking", "AUROC", "AP", "P@10", "P@25", "P@50"):
        table.add_column(column, justify="left" if column == "ranking" else "right")
    ensemble = " (ensemble)" if report.get("per_model") else ""
    rows = [("mislabel_score", report)] + list(report["ablation"].items()) + \
        [(f"{name}{ensemble}", figures) for name, figures in report["baselines"].items()] + \
        [(f"{name} ({model})", figures) for model, baselines in report.get("per_model", {}).items()
         for name, figures in baselines.items()]
    for label, figures in rows:
        at = figures["precision_at"]
        table.add_row(label, f"{figures['auroc']:.3f}", f"{figures['average_precision']:.3f}",
                      *(f"{at[k]:.2f}" if k in at else "" for k in ("10", "25", "50")))
    out.print(table)
    agrees = report["model_agrees"]
    if agrees["errors"]:
        out.print(f"{agrees['errors']} of the {report['n_errors']} label errors are the model's own top-1: with every "
                  f"other error ranked first, AUROC would be {agrees['auroc_disputed_first']:.3f}", highlight=False)
    queue = report["queue"]
    out.print(f"label errors among them: estimated {queue['estimate']:.0f}, verified {queue['errors']}; the review queue "
              f"holds {queue['queue']}: precision {queue['precision']:.2f}, recall {queue['recall']:.2f}, F1 "
              f"{queue['f1']:.3f} (the best cut of the ranking: {queue['best_f1']:.3f})", highlight=False)
    triage = Table("category / verdict of the verified candidates", "count", title="triage")
    for key, count in report["triage"].items():
        triage.add_row(key, str(count))
    out.print(triage)
    split = report["separation"]
    if split["n"]:
        table = Table("rule", "balanced accuracy", title=f"label error vs classifier failure, among the {split['n']} "
                                                          f"misclassified candidates ({split['n_errors']} label errors)")
        for rule, value in split.items():
            if rule not in ("n", "n_errors"):
                table.add_row(rule, f"{value:.3f}")
        out.print(table)
    fixes = report["suggestions"]
    if fixes["n"]:
        out.print(f"the humans' label, among the {fixes['n']} label errors they gave one for: suggested_label "
                  f"{fixes['suggested_label']} (offered for {fixes['offered']}), the model's top-1 {fixes['model_top1']}",
                  highlight=False)
    several = report.get("ambiguous")
    if several:
        table = Table("flagged as", "precision", "recall", title=f"{several['multi_label']} multi-label images: "
                                                                  f"{several['flagged']} flagged ambiguous")
        for rule in ("ambiguous", "top-1 margin alone"):
            table.add_row(rule, f"{several[rule]['precision']:.2f}", f"{several[rule]['recall']:.2f}")
        out.print(table)
        signals = ", ".join(f"{name} {auroc:.3f}" for name, auroc in several.get("signals", {}).items())
        out.print(f"AUROC for multi-label images: {signals}", highlight=False)


@app.command()
@command
def datasets() -> None:
    """List the FiftyOne datasets and how many samples each has scanned."""
    from audit.store import db

    table = Table("name", "samples", "scanned", "flagged")
    for dataset_name in db.list_datasets():
        dataset = db.fo.load_dataset(dataset_name)
        scanned = len(dataset.exists(names.CATEGORY)) if dataset.has_sample_field(names.CATEGORY) else 0
        flagged = len(db.flagged_view(dataset)) if scanned else 0
        table.add_row(dataset_name, str(len(dataset)), str(scanned), str(flagged))
    out.print(table)


@app.command()
@command
def delete(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a dataset and its heatmap files (asks first). Your image files are not touched."""
    from audit.store import db

    dataset = db.load_dataset(name)
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("refusing to delete without a terminal to ask; pass --yes", param_hint="--yes")
        typer.confirm(f"delete dataset '{name}' ({len(dataset)} samples)?", abort=True)
    db.delete_dataset(name)
    err.print(f"deleted '{name}'")


@app.command()
@command
def models() -> None:
    """List the embedded models and how to name others."""
    from audit.models.registry import available_models

    table = Table("name", "kind", "architecture", "weights")
    for row in available_models():
        table.add_row(row["name"], row["kind"], row["architecture"], row["weights"])
    out.print(table)


@app.command()
@command
def relabel(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    from_path: Annotated[Optional[Path], typer.Option(
        "--from", help="An edited relabel list (csv/json/jsonl from `audit export`, or Label Studio's export).")] = None,
    from_app: Annotated[bool, typer.Option("--from-app", help="Apply the corrections marked in the App.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and report; change nothing.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Apply the valid rows even when others are bad.")] = False,
    allow_new_labels: Annotated[bool, typer.Option(
        help="Accept labels the dataset does not use yet (datasets whose labels are not ImageNet classes).")] = False,
) -> None:
    """Apply corrected labels from an edited relabel list or the App's marks.

    Rows with new_label set are matched by sample_id, else filepath. The original label is kept in
    <label field>_original and relabel_history; nothing is written when a row is bad (unless
    --skip-invalid); applying the same file again changes nothing."""
    from audit.review.relabel import RelabelError, relabel_from_file, relabel_from_marks
    from audit.store import db

    if (from_path is None) == (not from_app):
        raise typer.BadParameter("give --from FILE or --from-app (one of them)", param_hint="--from")
    dataset = db.load_dataset(name)
    options = dict(allow_new_labels=allow_new_labels, skip_invalid=skip_invalid, dry_run=dry_run)
    result = relabel_from_marks(dataset, **options) if from_app else relabel_from_file(dataset, from_path, **options)
    for problem in result.problems:
        err.print(f"problem: {problem}", markup=False, highlight=False, soft_wrap=True)
    for change in result.changed:
        where = Path(change["filepath"]).name if change.get("filepath") else change["sample_id"]
        verb = "changed" if result.applied else "would change"
        err.print(f"{verb} {where}: {change['from']} -> {change['to']}", markup=False, highlight=False)
    if result.problems and not skip_invalid:  # a dry run fails where the real run would: a script's check
        outcome = "a real run would change nothing" if dry_run else "nothing changed"
        raise RelabelError(f"{len(result.problems)} row(s) cannot be applied, {outcome}; fix them or "
                           "pass --skip-invalid")
    summary = (f"{'would change' if dry_run else 'changed'} {len(result.changed)}, already right {result.unchanged}, "
               f"without a new label {result.skipped}, problems {len(result.problems)}")
    err.print(summary)
    if result.changed and result.applied:
        err.print("the relabelled samples are judged for their new labels on the whole image now, and on every "
                  "view by the next `audit scan` of this dataset")


@app.command("app")
@command
def app_command(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    view: Annotated[Optional[str], typer.Option(
        help="Saved view to open (default: audit-review, likely label errors first).")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Port (default: FiftyOne's, 5151).")] = None,
    address: Annotated[str, typer.Option(
        help="Address to serve on; 0.0.0.0 exposes the App to the network.")] = settings.DEFAULT_APP_ADDRESS,
) -> None:
    """Open the FiftyOne App on the flagged samples, with the audit plugin; runs until Ctrl-C.

    The saved view audit-review (likely label errors first, each category most suspect first) opens
    unless --view names another (audit-flagged: every flagged sample, most suspect first); the
    plugin's operators mark, export, relabel and re-run the audit from the App."""
    from audit.review import app as audit_app
    from audit.store import db

    dataset = db.load_dataset(name)
    session, url, warnings = audit_app.launch(dataset, view=view, port=port, address=address)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False)
    out.print(f"App: {url}", markup=False, highlight=False, soft_wrap=True)
    err.print("operators: press ` in the App and type 'audit'; panel: + > Audit summary. Ctrl-C stops.")
    audit_app.serve(session)
    err.print("App stopped")


@app.command()
@command
def report(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    out_path: Annotated[Path, typer.Option("--out", help="HTML file to write.")],
    top: Annotated[int, typer.Option(min=1, help="How many flagged samples to show.")] = 25,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write a self-contained HTML report of the top flagged samples.

    Summary figures, then each flagged sample as the photo, its Eigen-CAM map and box, and the reasons."""
    from audit.review.report import write_report
    from audit.store import db

    dataset = db.load_dataset(name)
    shown = write_report(dataset, out_path, top=top, overwrite=overwrite)
    err.print(f"wrote {out_path} ({shown} flagged samples, {out_path.stat().st_size // 1024} KiB)")


def run() -> None:
    """The `audit` program. A usage error is one line on stderr and exit status 2, as the contract
    says (Typer would print the usage and a framed message over several lines)."""
    try:
        code = typer.main.get_command(app).main(prog_name="audit", standalone_mode=False)
    except typer.TyperException as error:  # the command-line parser's errors (click's, inside Typer)
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare `audit`: the help
            error.show()
        elif error.exit_code == 2:
            where = error.ctx.command_path if getattr(error, "ctx", None) else "audit"
            message = error.format_message().replace("Value error, ", "")  # pydantic's prefix, via Typer
            err.print(f"error: {message} (`{where} --help` shows the usage)",
                      markup=False, highlight=False, soft_wrap=True)
        else:
            err.print(f"error: {error.format_message()}", markup=False, highlight=False, soft_wrap=True)
        code = error.exit_code
    except typer.Abort:
        err.print("aborted", markup=False, highlight=False)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
