"""The audit's FiftyOne plugin: review the suspects in the App.

Operators (press ` in the App, or use the operator browser, and type "audit"):
mark the selected samples ``relabel`` (with the corrected label) or ``label_ok``, apply the marked
corrections, export the relabel list of the current view, and run the audit (explanations +
scoring) on the current view or the selected samples. The panel "Audit summary" shows the counts
per category, the distribution of mislabel_score, and the review marks.

Every operator is a call into the ``audit`` library, which must be importable by the Python that
runs the App (the one ``audit app`` uses).
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

import fiftyone.operators as foo
import fiftyone.operators.types as types

from audit import names
from audit.errors import AuditError

CATEGORY_HELP = ("suspected_mislabel: the label is probably wrong; classifier_failure: the model is wrong or "
                 "unsure, the label probably right; ambiguous: several objects or classes, the label may hold for one")
REVIEW_HELP = (f"The review view (`{names.REVIEW_VIEW}`) lists the flagged samples likely label errors first: "
               + ", then ".join(names.REVIEW_ORDER[:4]) + "; within each, highest mislabel_score first. "
               f"`{names.FLAGGED_VIEW}` orders them by mislabel_score alone, as `audit rank` and `audit export` do. "
               + CATEGORY_HELP)


def _targets(ctx) -> list[str]:
    """The selected samples, else the sample open in the modal."""
    if ctx.selected:
        return list(ctx.selected)
    current = getattr(ctx, "current_sample", None)
    return [current] if current else []


def notifies_errors(execute):
    """Every operator's ``execute``: a failure the audit explains (`AuditError`: a refused lock, a
    missing model, a bad label) becomes an error notification in the App and the result's ``error``,
    not a traceback. Generator operators notify as their last message."""
    if inspect.isgeneratorfunction(execute):
        @functools.wraps(execute)
        def run_generator(self, ctx):
            try:
                yield from execute(self, ctx)
            except AuditError as error:
                yield ctx.ops.notify(str(error), variant="error")
        return run_generator

    @functools.wraps(execute)
    def run(self, ctx):
        try:
            return execute(self, ctx)
        except AuditError as error:
            ctx.ops.notify(str(error), variant="error")
            return {"error": str(error)}
    return run


def _error(inputs, message: str) -> types.Property:
    prop = inputs.str("message", label=message, view=types.Warning())
    prop.invalid = True
    return prop


class MarkRelabel(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="mark_relabel", label="Audit: mark selected as relabel (label is wrong)",
                                  description="Tag the selected samples 'relabel' with the corrected label",
                                  dynamic=True, icon="edit")

    def resolve_input(self, ctx):
        inputs = types.Object()
        ids = _targets(ctx)
        if not ids:
            _error(inputs, "Select the samples whose label is wrong first (or open one)")
            return types.Property(inputs, view=types.View(label="Mark as relabel"))
        view = ctx.dataset.select(ids)
        suggested = [s for s in view.values(names.SUGGESTED) if s] if ctx.dataset.has_sample_field(
            names.SUGGESTED) else []
        default = suggested[0] if suggested and len(set(suggested)) == 1 else None
        choices = types.AutocompleteView()
        for label in _label_choices(ctx.dataset, view):
            choices.add_choice(label, label=label)
        from audit.score.triage import label_set

        spelling = ("any ImageNet class name, synonym or WordNet id" if label_set(ctx.dataset) is None
                    else "one of the dataset's labels, or a new one")
        inputs.str("new_label", label="Corrected label", default=default, view=choices,
                   description=f"for {len(ids)} sample(s): {spelling}; leave empty to decide later")
        return types.Property(inputs, view=types.View(label=f"Mark {len(ids)} sample(s) as relabel"))

    @notifies_errors
    def execute(self, ctx):
        from audit.review.relabel import mark_samples

        count = mark_samples(ctx.dataset, _targets(ctx), names.RELABEL_TAG, new_label=ctx.params.get("new_label") or None)
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"marked {count} sample(s) relabel", variant="success")
        return {"marked": count}


def _label_choices(dataset, view) -> list[str]:
    """The labels a reviewer most likely wants: the suggestions and top labels of these samples
    (those of the dataset's label set only, where it has its own), then every label the dataset uses."""
    from audit.score.triage import label_set
    from audit.store.db import label_field

    classes = label_set(dataset)
    labels = [s for s in view.values(names.SUGGESTED) if s] if dataset.has_sample_field(names.SUGGESTED) else []
    if dataset.has_sample_field(names.SIGNALS):
        for top in view.values(f"{names.SIGNALS}.top_labels"):
            labels.extend(label for label in top or [] if classes is None or label in classes)
    field = label_field(dataset)
    labels.extend(sorted(v for v in dataset.distinct(f"{field}.label") if v) if dataset.has_sample_field(field) else [])
    return list(dict.fromkeys(labels))


class MarkLabelOk(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="mark_label_ok", label="Audit: mark selected as label_ok (label is right)",
                                  description="Tag the selected samples 'label_ok'", dynamic=True, icon="check")

    def resolve_input(self, ctx):
        inputs = types.Object()
        ids = _targets(ctx)
        if not ids:
            _error(inputs, "Select the samples whose label is right first (or open one)")
        else:
            inputs.str("message", label=f"Mark {len(ids)} sample(s) as label_ok?", view=types.Notice())
        return types.Property(inputs, view=types.View(label="Mark as label_ok"))

    @notifies_errors
    def execute(self, ctx):
        from audit.review.relabel import mark_samples

        count = mark_samples(ctx.dataset, _targets(ctx), names.OK_TAG)
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"marked {count} sample(s) label_ok", variant="success")
        return {"marked": count}


class ApplyRelabelMarks(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="apply_relabel_marks", label="Audit: apply the relabel marks",
                                  description="Write the corrected labels marked 'relabel' (originals are kept)",
                                  dynamic=True, icon="done_all")

    def resolve_input(self, ctx):
        from audit.review.relabel import relabel_from_marks

        inputs = types.Object()
        preview = relabel_from_marks(ctx.dataset, dry_run=True)
        if preview.problems:
            _error(inputs, f"{len(preview.problems)} mark(s) cannot be applied: " + "; ".join(preview.problems[:3]))
        elif not preview.changed:
            _error(inputs, "Nothing to apply: no sample is marked relabel with a new label"
                   + (f" ({preview.skipped} marked without a label)" if preview.skipped else ""))
        else:
            inputs.str("message", view=types.Notice(), label=(
                f"Change the label of {len(preview.changed)} sample(s); the original labels are kept in "
                "ground_truth_original and relabel_history"))
        return types.Property(inputs, view=types.View(label="Apply relabel marks"))

    @notifies_errors
    def execute(self, ctx):
        from audit.review.app import apply_app_defaults
        from audit.review.relabel import relabel_from_marks

        result = relabel_from_marks(ctx.dataset)
        apply_app_defaults(ctx.dataset)  # a new class takes the given label's colour
        ctx.ops.reload_dataset()
        ctx.ops.notify(f"relabelled {len(result.changed)} sample(s)", variant="success")
        return {"changed": len(result.changed), "problems": result.problems}


class ExportRelabelList(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="export_relabel_list", label="Audit: export the relabel list of this view",
                                  description="csv/json/jsonl/Label Studio; new_label is prefilled from the marks",
                                  dynamic=True, icon="download")

    def resolve_input(self, ctx):
        inputs = types.Object()
        ctx.target_view()  # offers "current view / selected samples / dataset"
        formats = types.RadioGroup()
        for fmt in ("csv", "json", "jsonl", "labelstudio"):
            formats.add_choice(fmt, label=fmt)
        inputs.enum("format", formats.values(), default="csv", label="Format", view=formats)
        fmt = ctx.params.get("format") or "csv"
        extension = "json" if fmt == "labelstudio" else fmt
        default = str(Path.home() / f"audit-{ctx.dataset.name}-relabel.{extension}")
        inputs.str("path", label="Write to (a path on the machine running the App)", required=True,
                   default=default)
        inputs.bool("everything", label="Every scanned sample, not only the flagged ones", default=False)
        inputs.bool("overwrite", label="Replace the file if it exists", default=False)
        return types.Property(inputs, view=types.View(label="Export relabel list"))

    @notifies_errors
    def execute(self, ctx):
        from audit.review.export import export_dataset

        path = os.path.expanduser(ctx.params["path"])
        exported = export_dataset(ctx.target_view(), Path(path), fmt=ctx.params.get("format") or "csv",
                                  everything=bool(ctx.params.get("everything")),
                                  overwrite=bool(ctx.params.get("overwrite")), prefill_marks=True)
        serve = "" if exported.labelstudio is None else (
            f" (Label Studio: document root {exported.labelstudio.document_root}, "
            f"Local files storage {exported.labelstudio.storage})")
        ctx.ops.notify(f"wrote {exported.count} rows to {path}{serve}", variant="success")
        return {"rows": exported.count, "path": path}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("rows", label="Rows written")
        outputs.str("path", label="File")
        outputs.str("error", label="Error")
        return types.Property(outputs)


class RunAudit(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="run_audit", label="Audit: run the audit on this view or selection",
                                  description="Model, Eigen-CAM, boxes and scoring for the chosen samples",
                                  dynamic=True, icon="troubleshoot", execute_as_generator=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        target = ctx.target_view()
        inputs.str("model", label="Model(s)", default=",".join(_scanned_models(ctx.dataset)),
                   description="as in `audit models`, comma-separated for an ensemble; by default the "
                               "models of the dataset's last scan")
        inputs.bool("redo", label="Redo samples already scanned with these settings", default=False)
        done = _done_with_last_settings(ctx.dataset, target)
        todo = len(target) if ctx.params.get("redo") else len(target) - done
        already = f"; {done} already scanned with the last scan's settings" if done and not ctx.params.get("redo") else ""
        inputs.str("message", view=types.Notice(), label=f"{todo} of {len(target)} sample(s) will be scanned{already}, "
                   "on the machine running the App (about 0.1-0.5 s an image on a CPU)")
        from audit.review.report import judged_by

        inputs.str("judged", view=types.Notice(), label=f"Last scan: {judged_by(ctx.dataset)}")
        return types.Property(inputs, view=types.View(label="Run the audit"))

    @notifies_errors
    def execute(self, ctx):
        from audit.models.registry import load_models
        from audit.pipeline import audit_dataset
        from audit.review.app import apply_app_defaults
        from audit.scan.options import ScanOptions

        target = ctx.target_view()
        yield ctx.trigger("set_progress", dict(label=f"loading the model for {len(target)} sample(s)"))
        model_names = [n.strip() for n in (ctx.params.get("model") or "").split(",") if n.strip()]
        same = not model_names or model_names == _scanned_models(ctx.dataset)  # as the last scan ran them
        models = _scanned_models_loaded(ctx.dataset) if same else load_models(model_names)
        yield ctx.trigger("set_progress", dict(label=f"scanning {len(target)} sample(s)"))
        result = audit_dataset(target, models, options=ScanOptions(workers=0, restart=bool(ctx.params.get("redo"))))
        apply_app_defaults(ctx.dataset)  # the colours of the new `why` chips
        yield ctx.ops.reload_dataset()
        counts = ", ".join(f"{c} {n}" for c, n in sorted(result.scoring.counts.items()))
        yield ctx.ops.notify(f"scanned {result.scan.scanned}, already done {result.scan.skipped}; {counts}",
                             variant="success")


def _done_with_last_settings(dataset, target) -> int:
    """How many samples of ``target`` the dataset's last scan settings would skip (0 if never scanned)."""
    key = dataset.info.get("audit", {}).get("scan", {}).get("key")
    if not key or not dataset.has_sample_field(names.DONE):
        return 0
    from audit.scan.pending import count_shard

    return count_shard(target, key, (1, 1))[1]


def _scanned_models_loaded(dataset):
    """The models of the dataset's last scan, as it ran them: a single model of the user's with its own
    weights, class names and config; else the models by name."""
    from audit.models.registry import load_models

    scanned = dataset.info.get("audit", {}).get("scan", {}).get("models", [])
    if len(scanned) == 1 and ("classes" in scanned[0] or scanned[0].get("config")):
        own = scanned[0]
        return load_models([own["model"]], weights=own["weights"], classes=own.get("classes_file"),
                           config=own.get("config"))
    return load_models(_scanned_models(dataset))


def _scanned_models(dataset) -> list[str]:
    """The models of the dataset's last scan (so a re-run matches it), else the embedded default."""
    scanned = dataset.info.get("audit", {}).get("scan", {}).get("models", [])
    return [entry["model"] for entry in scanned] or [names.DEFAULT_MODEL]


def _view_with_filters(ctx):
    """The view the grid shows, the sidebar's filters included: FiftyOne's ``ctx.view`` leaves them
    out while a saved view is open (it loads the saved view by name), as the App opens on one."""
    params = ctx.request_params
    if not params.get("view_name") or not (params.get("filters") or params.get("extended")):
        return ctx.view
    import fiftyone.server.view as fosv

    return fosv.get_view(ctx.dataset, stages=params.get("view"), filters=params.get("filters"),
                         extended_stages=params.get("extended"))


class AuditSummary(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(name="audit_summary", label="Audit summary", icon="insights",
                               help_markdown="Counts per category and the mislabel_score distribution of "
                                             "the current view (its filters included) or the selection. " + REVIEW_HELP)

    # The figures are computed as the panel renders, from what the grid shows. A view, filter or
    # selection change re-renders the panel; these handlers need to exist for that, and change no
    # state: a panel state change makes the App drop the sidebar's filters (FiftyOne 1.x).
    def on_load(self, ctx):
        pass

    def on_change_view(self, ctx):
        pass

    def on_change_dataset(self, ctx):
        pass

    def on_change_selected(self, ctx):
        pass

    def show_review(self, ctx):
        ctx.ops.set_view(name=names.REVIEW_VIEW)

    def show_mislabels(self, ctx):
        ctx.ops.set_view(name=names.CATEGORY_VIEWS[names.SUSPECTED_MISLABEL])

    def render(self, ctx):
        from audit.review.queue import review_queue
        from audit.review.report import summary_figures

        view = _view_with_filters(ctx)
        figures = summary_figures(view.select(ctx.selected) if ctx.selected else view)
        shown = f"{len(ctx.selected)} selected" if ctx.selected else "in this view"
        dataset = ctx.dataset
        scanned = len(dataset.exists(names.CATEGORY)) if dataset.has_sample_field(names.CATEGORY) else 0
        marks = figures["marks"]
        panel = types.Object()
        panel.md(
            f"**{figures['total']} samples {shown}: {figures['flagged']} flagged**, {figures['scanned']} scanned "
            f"(the dataset: {scanned} of {len(dataset)} scanned)\n\n{figures['judged_by']}\n\n**{figures['label_errors']}**\n\n"
            f"Review marks: relabel {marks.get('relabel', 0)} · label_ok {marks.get('label_ok', 0)} · "
            f"relabeled {marks.get('relabeled', 0)}", name="summary")
        stages = review_queue(dataset)
        if stages:
            lines = [f"1. **{stages[0].progress}**"] + [f"{n}. {s.progress}" for n, s in enumerate(stages[1:], 2)]
            panel.md(f"**Review queue** (`{names.REVIEW_VIEW}`, in this order; each stage's last tile says where "
                     "it ends):\n\n" + "\n".join(lines), name="queue")
        panel.btn("show_review", label="Review the flagged: likely label errors first", on_click=self.show_review,
                  variant="contained")
        if stages and stages[0].category == names.SUSPECTED_MISLABEL:
            panel.btn("show_mislabels", label=f"Only the {stages[0].count:,} likely wrong labels",
                      on_click=self.show_mislabels, variant="outlined")
        peak = max([c["count"] for c in figures["categories"]] or [1])
        layout = {"height": 280, "margin": {"l": 40, "r": 10, "t": 40, "b": 60}, "bargap": 0.05,
                  "yaxis": {"dtick": 1} if peak <= 10 else {"rangemode": "tozero"}, "showlegend": False}
        panel.plot("categories", data=_category_bars(figures), config={"displayModeBar": False},
                   layout={**layout, "title": {"text": "samples per category"}})
        panel.plot("scores", data=_score_histogram(figures), config={"displayModeBar": False},
                   layout={**layout, "barmode": "stack", "title": {"text": "mislabel_score"}, "showlegend": True,
                           "legend": {"orientation": "h", "y": -0.35},
                           "xaxis": {"range": [0, 1], "title": {"text": "higher = label more likely wrong"}}})
        panel.md(REVIEW_HELP, name="order")
        return types.Property(panel, view=types.GridView(align_x="left", align_y="top", orientation="vertical",
                                                         height=100, width=100, gap=2, padding=1))


def _category_bars(figures: dict) -> list[dict]:
    """Plotly bars: samples per category, each in its colour."""
    return [{"type": "bar", "x": [c["category"] for c in figures["categories"]], "hoverinfo": "x+y",
             "y": [c["count"] for c in figures["categories"]],
             "marker": {"color": [c["colour"] for c in figures["categories"]]}}]


def _score_histogram(figures: dict) -> list[dict]:
    """Plotly bars: the mislabel_score histogram, stacked by category, one legend entry each."""
    histogram = figures["histogram"]
    colours = {c["category"]: c["colour"] for c in figures["categories"]}
    return [{"type": "bar", "name": category, "x": histogram["centres"], "y": counts, "width": histogram["width"],
             "marker": {"color": colours.get(category, "#888")},
             "hovertemplate": f"{category}: %{{y}} with mislabel_score %{{x:.2f}}<extra></extra>"}
            for category, counts in histogram["by_category"].items()]


def register(p):
    p.register(MarkRelabel)
    p.register(MarkLabelOk)
    p.register(ApplyRelabelMarks)
    p.register(ExportRelabelList)
    p.register(RunAudit)
    p.register(AuditSummary)
