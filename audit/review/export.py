"""Relabel lists: the ranked samples as csv, json or jsonl, with an empty ``new_label`` column for
a reviewer to fill in and ``audit relabel --from`` to apply; or as Label Studio tasks
(``labelstudio``) for a labelling team, whose exports ``audit relabel --from`` reads back."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from audit import names
from audit.errors import AuditError
from audit.review.labelstudio import LabelStudioFolders, labelstudio_folders, labelstudio_tasks
from audit.score.triage import ranked_rows
from audit.store.outfile import atomic_output, check_output

FORMATS = ("csv", "json", "jsonl", "labelstudio")
COLUMNS = ("sample_id", "filepath", "given_label", "predicted_label", "predicted_confidence", "suggested_label",
           "category", "mislabel_score", "reasons", "new_label")


class ExportError(AuditError):
    """The export could not be written; one line."""


def export_rows(dataset, *, category: str | None = None, top: int | None = None, everything: bool = False) -> list[dict]:
    """Rows in the export's column order, highest mislabel_score first."""
    rows = []
    for row in ranked_rows(dataset, category=category, top=top, everything=everything):
        rows.append({
            "sample_id": row["id"], "filepath": row["filepath"], "given_label": row["given_label"],
            "predicted_label": row["predicted_label"], "predicted_confidence": row["predicted_confidence"],
            "suggested_label": row["suggested_label"], "category": row["category"],
            "mislabel_score": row["mislabel_score"], "reasons": row["reasons"] or [], "new_label": "",
        })
    return rows


def write_export(rows: list[dict], out: Path, fmt: str, overwrite: bool = False) -> None:
    """Write atomically (a temporary file renamed into place); never replaces a file unless asked."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    check_output(out, overwrite, ExportError)
    with atomic_output(out, ExportError, newline="") as handle:
        if fmt == "csv":
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "reasons": "; ".join(row["reasons"])})
        elif fmt == "json":
            json.dump(rows, handle, indent=1)
        elif fmt == "labelstudio":
            json.dump(rows, handle, indent=1)  # tasks made by labelstudio_tasks
        else:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


@dataclass(frozen=True)
class Exported:
    """What an export wrote: how many rows (or tasks), and for Label Studio the folders to serve them from."""

    count: int
    labelstudio: LabelStudioFolders | None = None


def export_dataset(dataset, out: Path, *, fmt: str = "csv", category: str | None = None, top: int | None = None,
                   everything: bool = False, overwrite: bool = False, document_root: Path | None = None,
                   prefill_marks: bool = False) -> Exported:
    """Write the relabel list of a dataset or a view (``audit export``). ``prefill_marks`` fills
    ``new_label`` with the corrected labels marked in the App; ``document_root`` is Label Studio's
    (default: the folder above the images' common folder, see `labelstudio_folders`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    rows = export_rows(dataset, category=category, top=top, everything=everything)
    if prefill_marks and dataset.has_sample_field(names.RELABEL_TO):
        marked = dict(zip(*dataset.values(["id", names.RELABEL_TO])))
        for row in rows:
            row["new_label"] = marked.get(row["sample_id"]) or ""
    folders = None
    if fmt == "labelstudio":
        candidates = candidate_labels(dataset, [row["sample_id"] for row in rows])
        folders = labelstudio_folders([row["filepath"] for row in rows], document_root)
        rows = labelstudio_tasks(rows, folders, candidates)
    write_export(rows, out, fmt, overwrite=overwrite)
    return Exported(len(rows), folders)


def candidate_labels(dataset, sample_ids: list[str]) -> dict[str, list[str]]:
    """The model's top labels of each sample (from its stored signals), to offer as choices."""
    if not sample_ids:
        return {}
    ids, tops = dataset.select(sample_ids).values(["id", f"{names.SIGNALS}.top_labels"])
    return {sample_id: list(top or []) for sample_id, top in zip(ids, tops)}
