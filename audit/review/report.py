"""A self-contained HTML report of an audited dataset: summary figures (samples per category, the
distribution of mislabel_score) and the top flagged samples, each as the photo beside the photo with
its Eigen-CAM map and box, with the reasons. Images are inline (small base64 JPEGs): the page is
one file to mail or attach to a ticket."""

from __future__ import annotations

import base64
import html
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from audit import names
from audit.errors import AuditError
from audit.heads.given import weighed_in
from audit.review.relabel import marks_summary
from audit.review.render import overlay
from audit.score.estimate import LabelErrors
from audit.signals import Signals
from audit.store import db
from audit.store.outfile import atomic_output, check_output

CATEGORY_MEANING = {
    names.SUSPECTED_MISLABEL: "the label is more likely wrong than right: the review queue",
    names.CLASSIFIER_FAILURE: "the model disputes a label that is more likely right",
    names.AMBIGUOUS: "several objects or classes compete, or the label is not one of the model's classes",
    names.BAD_BOX: "the ground-truth boxes are off the object",
    names.OK: "the model agrees with the label",
    names.ERROR_CATEGORY: "the image could not be read",
}
BINS = 20
PER_CLASS_ROWS = 10  # the per-class table's classes, most wrong labels first


class ReportError(AuditError):
    """The report could not be written; one line."""


def judged_by(dataset) -> str:
    """Which head judged the labels and which model explained, in a line (the panel and the report)."""
    info = db.audit_info(dataset)
    head = info.get("head")
    models = info.get("scan", {}).get("models", [])
    if not head or not models:
        return "not scanned yet"
    named = ", ".join(m["model"] + (f" ({Path(m['weights']).name})" if "classes" in m else "") for m in models)
    kind = {"model": "the model's own head", "fit": "a head fitted on the embeddings (out of fold)",
            "given": f"your predictions, {info.get('predictions', {}).get('source', '?')}"}.get(head["kind"], head["kind"])
    why = weighed_in(head) if head["kind"] == "given" else f" ({head.get('why', '')})"  # the source is named once
    return f"judged by {kind}{why}; explained by {named}"


def label_errors_line(dataset) -> str:
    """The dataset's estimate of its wrong labels in a line (`audit.score.estimate.LabelErrors.line`)."""
    errors = LabelErrors.read(db.audit_info(dataset).get("label_errors"))
    return errors.line() if errors else "label errors: not estimated yet (run `audit scan`, or `audit rank --rescore`)"


def summary_figures(collection) -> dict:
    """Counts per category, the mislabel_score histogram (20 bins over [0, 1], per category) and the
    review marks of a dataset or view, as plain data (the App panel and the report draw it)."""
    if not collection._root_dataset.has_sample_field(names.CATEGORY):
        return {"scanned": 0, "flagged": 0, "total": len(collection), "categories": [], "marks": {},
                "judged_by": judged_by(collection._root_dataset),
                "label_errors": label_errors_line(collection._root_dataset),
                "histogram": {"edges": [], "centres": [], "counts": [], "width": 1 / BINS, "by_category": {}}}
    categories, scores = collection.values([names.CATEGORY, names.SCORE])
    counts = Counter(c for c in categories if c)
    edges = np.linspace(0.0, 1.0, BINS + 1)
    by_category = {}
    for category in names.CATEGORIES:
        values = [s for c, s in zip(categories, scores) if c == category and s is not None]
        if values:
            by_category[category] = np.histogram(np.clip(values, 0, 1), bins=edges)[0].tolist()
    total = [sum(column) for column in zip(*by_category.values())] if by_category else [0] * BINS
    return {
        "total": len(collection),
        "scanned": sum(counts.values()),
        "flagged": sum(n for c, n in counts.items() if c != names.OK),
        "categories": [{"category": c, "count": counts[c], "colour": names.CATEGORY_COLOURS[c]}
                       for c in names.CATEGORIES if counts.get(c)],
        "histogram": {"edges": edges.tolist(), "centres": ((edges[:-1] + edges[1:]) / 2).round(3).tolist(),
                      "counts": total, "width": 1 / BINS, "by_category": by_category},
        "marks": marks_summary(collection),
        "judged_by": judged_by(collection._root_dataset),
        "label_errors": label_errors_line(collection._root_dataset),
    }


def _jpeg_data_uri(picture: np.ndarray, quality: int = 80) -> str:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ReportError("could not encode a picture as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _histogram_svg(figures: dict, width: int = 440, height: int = 220) -> str:
    """The mislabel_score histogram as an inline SVG, bars stacked by category."""
    histogram = figures["histogram"]
    by_category = histogram["by_category"]
    left, bottom, top, right = 40, 36, 12, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(histogram["counts"] or [0]) or 1
    bar_w = plot_w / BINS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="histogram of mislabel_score">']
    for tick in range(0, peak + 1, max(1, peak // 4)):
        y = top + plot_h - tick / peak * plot_h
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">{tick}</text>')
    for index in range(BINS):
        base = 0
        for category, counts in by_category.items():
            count = counts[index]
            if not count:
                continue
            x = left + index * bar_w
            y = top + plot_h - (base + count) / peak * plot_h
            h = count / peak * plot_h
            parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                         f'fill="{names.CATEGORY_COLOURS[category]}"><title>{category}: {count} with score '
                         f'{histogram["edges"][index]:.2f}-{histogram["edges"][index + 1]:.2f}</title></rect>')
            base += count
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * plot_w
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="axis">{tick:g}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#999"/>'
                 f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis">'
                 'mislabel_score: the chance that the label is wrong</text></svg>')
    return "".join(parts)


def _category_bars(figures: dict) -> str:
    peak = max([c["count"] for c in figures["categories"]] or [1])
    rows = []
    for item in figures["categories"]:
        share = 100 * item["count"] / peak
        rows.append(f'<tr><td><span class="badge" style="background:{item["colour"]}">{item["category"]}</span></td>'
                    f'<td class="num">{item["count"]}</td><td class="barcell"><div class="bar" style="width:'
                    f'{share:.0f}%;background:{item["colour"]}"></div></td>'
                    f'<td class="meaning">{html.escape(CATEGORY_MEANING[item["category"]])}</td></tr>')
    return '<table class="cats">' + "".join(rows) + "</table>"


def _whole(estimate: float) -> int:
    """An estimated count rounded half up: the table lists what the estimate puts at half a label or more."""
    return int(estimate + 0.5)


def _per_class_table(dataset, rows: int = PER_CLASS_ROWS) -> str:
    """The classes whose labels are most often wrong, with what those labels should be (the
    estimate's per-class table), as an HTML table; empty without an estimate."""
    errors = LabelErrors.read(db.audit_info(dataset).get("label_errors"))
    if errors is None:
        return ""
    worst = [(label, row) for label, row in errors.per_class.items() if _whole(row["wrong"]) >= 1][:rows]
    if not worst:
        return ""
    lines = "".join(f'<tr><td>{html.escape(label)}</td><td>{row["labelled"]:,}</td><td>{_whole(row["wrong"])} '
                    f'({row["share"]:.0%})</td><td>' + html.escape(", ".join(f"{other} {_whole(n)}" for other, n in
                                                                        list(row["should_be"].items())[:3])) + "</td></tr>"
                    for label, row in worst)
    return ('<h2>Classes whose labels are most often wrong</h2><table class="kv"><tr><th>given label</th><th>samples</th>'
            f'<th>wrong (estimate)</th><th>should be</th></tr>{lines}</table>')


def _card(rank: int, sample, label_field: str, max_side: int) -> str:
    given = sample[label_field].label if sample[label_field] is not None else None
    prediction = sample[names.PREDICTIONS]
    heatmap = sample[names.EIGENCAM]
    boxes = {}
    if sample[names.EIGENCAM_BOX] is not None:
        boxes["eigencam"] = [d.bounding_box for d in sample[names.EIGENCAM_BOX].detections]
    if sample.has_field(names.GT_BOXES) and sample[names.GT_BOXES] is not None:
        boxes["ground_truth"] = [d.bounding_box for d in sample[names.GT_BOXES].detections]
    try:
        plain = _jpeg_data_uri(overlay(sample.filepath, None, {}, max_side=max_side))
        explained = _jpeg_data_uri(overlay(sample.filepath, heatmap.map_path if heatmap else None, boxes,
                                           max_side=max_side))
        pictures = (f'<figure><img src="{plain}" alt="photo"><figcaption>photo</figcaption></figure>'
                    f'<figure><img src="{explained}" alt="Eigen-CAM"><figcaption>Eigen-CAM (red = strongest)'
                    f'{", white box" if boxes.get("eigencam") else ""}'
                    f'{", green: ground-truth boxes" if boxes.get("ground_truth") else ""}</figcaption></figure>')
        given_map = sample[names.GRADCAM_GIVEN] if sample.has_field(names.GRADCAM_GIVEN) else None
        if given_map is not None and prediction is not None and prediction.label != given:
            evidence = _jpeg_data_uri(overlay(sample.filepath, given_map.map, {}, max_side=max_side))
            given_prob = Signals.read(sample[names.SIGNALS] or {}).given_prob
            strength = "" if given_prob is None else f", p = {given_prob:.3f}"
            pictures += (f'<figure><img src="{evidence}" alt="Grad-CAM of the given label"><figcaption>where '
                         f'the model sees most of \'{html.escape(given)}\' (Grad-CAM{strength})</figcaption></figure>')
    except Exception as error:  # an unreadable image still gets its row
        pictures = f'<div class="missing">image not readable: {html.escape(str(error)[:120])}</div>'
    category = sample[names.CATEGORY]
    given_class = "wrong" if category == names.SUSPECTED_MISLABEL else ""
    score = sample[names.SCORE]
    suggested = sample[names.SUGGESTED]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in (sample[names.REASONS] or []))
    predicted = (f"{html.escape(prediction.label)} ({prediction.confidence:.2f})" if prediction is not None else "–")
    return (f'<section class="card"><div class="pics">{pictures}</div><div class="facts">'
            f'<div class="title"><span class="rank">#{rank}</span> {html.escape(Path(sample.filepath).name)}'
            f' <span class="badge" style="background:{names.CATEGORY_COLOURS.get(category, "#777")}">{category}</span></div>'
            f'<table class="kv"><tr><th>given label</th><td class="{given_class}">{html.escape(given or "(none)")}</td></tr>'
            f'<tr><th>suggested</th><td class="suggested">{html.escape(suggested or "–")}</td></tr>'
            f'<tr><th>predicted</th><td>{predicted}</td></tr>'
            f'<tr><th>mislabel_score</th><td>{"–" if score is None else f"{score:.3f}"}</td></tr></table>'
            f'<ul class="reasons">{reasons}</ul>'
            f'<div class="path" title="sample id {sample.id}">{html.escape(sample.filepath)}</div></div></section>')


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f6f4}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 10px}
.meta{color:#666;margin-bottom:18px}
.summary{display:flex;flex-wrap:wrap;gap:20px;align-items:stretch}
.panel{background:#fff;border:1px solid #e2e2e2;border-radius:8px;padding:14px 16px}
.figures{display:flex;gap:28px;margin-bottom:8px}.figure b{display:block;font-size:26px}
.cats{border-collapse:collapse}.cats td{padding:3px 8px 3px 0;vertical-align:middle}
.num{text-align:right;font-variant-numeric:tabular-nums;width:3em}.barcell{width:110px}
.bar{height:12px;border-radius:3px}.meaning{color:#666;font-size:12px;max-width:230px}
.badge{display:inline-block;color:#fff;border-radius:10px;padding:1px 9px;font-size:12px;white-space:nowrap}
.card{display:flex;gap:18px;background:#fff;border:1px solid #e2e2e2;border-radius:8px;padding:14px;margin:0 0 14px}
.pics{display:flex;gap:10px;flex:none}.pics figure{margin:0}
.pics img{display:block;max-width:210px;max-height:210px;border-radius:4px}
figcaption{color:#666;font-size:12px;margin-top:3px;max-width:210px}
.facts{min-width:0}.title{font-weight:600;font-size:16px;margin-bottom:6px}.rank{color:#999}
.kv th{text-align:left;color:#666;font-weight:normal;padding:1px 12px 1px 0}.kv td{padding:1px 0}
.wrong{text-decoration:line-through;color:#b00}.suggested{color:#070;font-weight:600}
.reasons{margin:8px 0;padding-left:18px;color:#333}
.path{color:#888;font-size:12px;word-break:break-all}
.axis{font-size:11px;fill:#555}.missing{color:#b00;width:300px}
footer{color:#888;font-size:12px;margin-top:24px}
"""


def build_report(collection, top: int = 25, max_side: int = 210, title: str | None = None) -> str:
    """The report page of a dataset (or view) as one HTML string."""
    dataset = collection._root_dataset
    label_field = db.label_field(dataset)
    figures = summary_figures(collection)
    flagged = db.flagged_view(collection).limit(top) if dataset.has_sample_field(names.CATEGORY) else None
    cards = [_card(rank, sample, label_field, max_side) for rank, sample in enumerate(flagged or [], start=1)]
    info = db.audit_info(dataset)
    name = html.escape(title or f"audit report: {dataset.name}")
    marks = figures.get("marks") or {}
    marks_text = (f"relabel {marks.get('relabel', 0)} · label_ok {marks.get('label_ok', 0)} · "
                  f"relabeled {marks.get('relabeled', 0)}") if any(marks.values()) else "none yet"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{name}</title>',
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body><main>',
        f'<h1>{name}</h1><div class="meta">{len(collection)} samples · source {html.escape(str(info.get("source", "?")))}'
        f' · label field <code>{html.escape(label_field)}</code> · made {when}</div>',
        f'<div class="meta">{html.escape(figures["judged_by"])}</div>',
        f'<p><b>{html.escape(figures["label_errors"])}</b></p>',
        '<div class="summary"><div class="panel"><div class="figures">',
        f'<div class="figure"><b>{figures["scanned"]}</b>scanned</div>',
        f'<div class="figure"><b>{figures["flagged"]}</b>flagged</div>',
        f'<div class="figure"><b>{sum(c["count"] for c in figures["categories"] if c["category"] == names.SUSPECTED_MISLABEL)}'
        '</b>suspected mislabels</div></div>',
        _category_bars(figures), f'<div class="meta" style="margin:10px 0 0">review marks: {marks_text}</div></div>',
        f'<div class="panel">{_histogram_svg(figures)}</div></div>',
        _per_class_table(dataset),
        f'<h2>Top {len(cards)} flagged samples, most suspect first</h2>' if cards else
        '<h2>Nothing flagged</h2><p>The audit agrees with every label it could judge.</p>',
        *cards,
        '<footer>Eigen-CAM: the first principal component of the explained layer\'s activations (Bany Muhammad '
        '&amp; Yeasin, 2020), drawn in the JET colours over the photo; the white box is the largest region above '
        'the threshold. Fix labels with <code>audit export</code> + <code>audit relabel --from</code>, or in the '
        'App with <code>audit app</code>.</footer></main></body></html>',
    ]
    return "".join(parts)


def write_report(collection, out: Path, *, top: int = 25, overwrite: bool = False, max_side: int = 210) -> int:
    """Write the report atomically (never over an existing file unless ``overwrite``); returns the
    number of flagged samples shown."""
    out = Path(out)
    check_output(out, overwrite, ReportError)
    page = build_report(collection, top=top, max_side=max_side)
    with atomic_output(out, ReportError) as handle:
        handle.write(page)
    return page.count('<section class="card">')

