"""Label Studio, both ways: the tasks `audit export --format labelstudio` writes (images served as
Local files, our columns as data, the given label pre-selected) and the answers of Label Studio's
exports of them, which `audit relabel --from` applies. Checked with Label Studio 1.23.2."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from audit.errors import AuditError


class LabelStudioError(AuditError):
    """The tasks cannot be served the way Label Studio serves local files; one line."""


# Label Studio: the project's labelling interface. Choices come from each task (the given label, our
# suggestion, the model's top 5); a free-text box takes any other label. Shown in docs/relabelling.md.
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
    root ``document_root`` or else the storage's parent. LabelStudioError when Label Studio would refuse them."""
    folders = [Path(path).resolve().parent for path in filepaths] or [Path.cwd()]
    storage = Path(os.path.commonpath([str(folder) for folder in folders]))
    root = storage.parent if document_root is None else Path(document_root).resolve()
    for filepath in filepaths:
        if root not in Path(filepath).resolve().parents:
            raise LabelStudioError(f"{filepath} is not under the document root {root}; "
                              "pass a --document-root that holds every image")
    if root == storage or root not in storage.parents:
        raise LabelStudioError(f"the document root must be a folder above the images' folder {storage} (Label Studio "
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


def labelstudio_answer(task: dict) -> dict:
    """The latest annotation of a Label Studio task that was not skipped, as new_label(_other)."""
    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not annotations:
        return {}
    latest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
    answer = {}
    for result in latest.get("result") or []:
        value = result.get("value") or {}
        if result.get("from_name") == "new_label":
            answer["new_label"] = value.get("choices")
        elif result.get("from_name") == "new_label_other":
            texts = value.get("text") or []
            answer["new_label_other"] = texts[0] if texts else None
    return answer
