"""Relabel lists: the ranked samples as csv, json or jsonl, with an empty ``new_label`` column for
a reviewer to fill in and ``audit relabel --from`` to apply; or as Label Studio tasks
(``labelstudio``) for a labelling team, whose exports ``audit relabel --from`` reads back."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from audit.errors import AuditError
from audit import names
from audit.outfile import atomic_output, check_output
from audit.triage import ranked_rows

FORMATS = ("csv", "json", "jsonl", "labelstudio")
COLUMNS = ("sample_id", "filepath", "given_label", "predicted_label", "predicted_confidence", "suggested_label",
           "category", "mislabel_score", "reasons", "new_label")


class ExportError(AuditError):
    """The export could not be written; one line."""


def export_rows(dataset, category: str | None = None, top: int | None = None, everything: bool = False) -> list[dict]:
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


def export_dataset(dataset, out: Path, fmt: str = "csv", category: str | None = None, top: int | None = None,
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


# Label Studio: the project's labelling interface. Choices come from each task (the given label, our
# suggestion, the model's top 5); a free-text box takes any other label. Shown in the README.
LABEL_STUDIO_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Header value="$summary"/>
  <Text name="reasons" value="$reasons"/>
  <Choices name="new_label" toName="image" choice="single" showInline="true" value="$options"/>
  <TextArea name="new_label_other" toName="image" placeholder="another label" maxSubmissions="1"
            editable="true"/>
</View>"""


@dataclass(frozen=True)
class LabelStudioFolders:
    """Where Label Studio serves the tasks' images from: ``document_root`` is its
    LOCAL_FILES_DOCUMENT_ROOT, ``storage`` the path of the project's Local files storage. Label
    Studio (1.23) refuses a storage that is not strictly below the document root, and serves a file
    only from within a storage: so the storage is the images' common folder, the root above it."""

    document_root: Path
    storage: Path


def labelstudio_folders(filepaths: list[str], document_root: Path | None = None) -> LabelStudioFolders:
    """The folders for ``filepaths`` (resolved): the storage is their common folder, the document
    root ``document_root`` or else the storage's parent. ExportError when Label Studio would refuse them."""
    folders = [Path(path).resolve().parent for path in filepaths] or [Path.cwd()]
    storage = Path(os.path.commonpath([str(folder) for folder in folders]))
    root = storage.parent if document_root is None else Path(document_root).resolve()
    for filepath in filepaths:
        if root not in Path(filepath).resolve().parents:
            raise ExportError(f"{filepath} is not under the document root {root}; "
                              "pass a --document-root that holds every image")
    if root == storage or root not in storage.parents:
        raise ExportError(f"the document root must be a folder above the images' folder {storage} (Label Studio "
                          f"refuses a Local files storage at its document root); pass --document-root {storage.parent}")
    return LabelStudioFolders(root, storage)


def labelstudio_tasks(rows: list[dict], folders: LabelStudioFolders,
                      candidates: dict[str, list[str]] | None = None) -> list[dict]:
    """Label Studio tasks, one per row: the image as a local-files URL
    (``/data/local-files/?d=<path relative to the document root>``, served from the storage of
    ``folders``), our columns as data fields, the choices to offer, and the given label as a
    pre-annotation (a prediction)."""
    tasks = []
    for row in rows:
        relative = Path(row["filepath"]).resolve().relative_to(folders.document_root)
        options = []
        for label in [row["given_label"], row["suggested_label"], row["predicted_label"],
                      *(candidates or {}).get(row["sample_id"], [])]:
            if label and label not in options:
                options.append(label)
        score = row["mislabel_score"]
        data = {
            "image": f"/data/local-files/?d={quote(relative.as_posix())}",
            "sample_id": row["sample_id"], "filepath": row["filepath"],
            "given_label": row["given_label"] or "", "suggested_label": row["suggested_label"] or "",
            "predicted_label": row["predicted_label"] or "", "predicted_confidence": row["predicted_confidence"],
            "category": row["category"], "mislabel_score": None if score is None else round(score, 3),
            "reasons": "; ".join(row["reasons"]) or "-", "options": [{"value": label} for label in options],
            "summary": (f"given: {row['given_label'] or '(none)'} | suggested: {row['suggested_label'] or '-'} | "
                        f"{row['category']}" + ("" if score is None else f", mislabel score {score:.2f}")),
        }
        task = {"data": data}
        if row["given_label"]:
            prediction = {"model_version": "given label",
                          "result": [{"from_name": "new_label", "to_name": "image", "type": "choices",
                                      "value": {"choices": [row["given_label"]]}}]}
            if score is not None:
                prediction["score"] = round(1.0 - score, 3)  # how much the audit trusts the given label
            task["predictions"] = [prediction]
        tasks.append(task)
    return tasks

