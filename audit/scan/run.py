"""The streaming scan: decode in worker processes -> one forward pass per batch (logits and
target-layer activations) -> Eigen-CAM, boxes and signals -> bulk writes to the dataset.

Bounded memory: the samples still to scan are read from the database a page at a time (in ``_id``
order) as the loader asks for them; results are written in bulk every
``settings.FLUSH_EVERY_SAMPLES``; heatmap PNGs are encoded and written by a background thread.

Crash safety: a sample counts as scanned only when ``audit_done`` holds the scan key of the
current settings. A sample about to be redone has its marker cleared first; its map file is
written to a temporary name and renamed into place; its fields are written next; the marker goes
last, once the map files and the fields of the whole flush are stored. A killed scan therefore
leaves nothing marked done that is not complete, and the next run picks up where it stopped.
One scan per dataset (or per shard) at a time: see `audit.lock`.
"""


from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace

from audit import names, settings
from audit.heads.choice import FIT, HeadChoice, choose_head
from audit.models.registry import AuditModel, check_ensemble
from audit.scan import second_phase, top_ranked
from audit.scan.evidence import model_field_names
from audit.scan.kernel import BulkWriter, model_runtime, remove_temporary_maps
from audit.scan.local import LocalEngine
from audit.scan.options import ScanOptions, ScanSummary, scan_key
from audit.scan.pending import PendingSamples, count_shard
from audit.scan.ray_engine import RayEngine
from audit.score.triage import rescore
from audit.store import db
from audit.store.lock import LockError, ScanLock

# --- the loop -----------------------------------------------------------------------------------


def scan(dataset, models: AuditModel | list[AuditModel], *, options: ScanOptions | None = None,
         progress=None) -> ScanSummary:
    """Scan the unscanned samples of ``dataset`` (a dataset or a view) with ``models`` (one model,
    or several: an ensemble, see `audit.evidence.batch_evidence`).

    Two phases: the first streams the images (forward pass, embeddings, Eigen-CAM, boxes; with the
    model's head also the class maps and second opinions); the second (`audit.second_phase`) runs
    once the first is through, over every scanned sample of the dataset: the neighbours' vote and,
    with a fitted head (`audit.head_choice`), the fit and what depends on it, then the scoring
    (``scoring``) and a closer look at the top of the ranking (`audit.scan.top_ranked`).

    ``progress`` is a rich Progress or None. Raises `audit.lock.LockError` when another scan of
    the same dataset (and shard) runs. Ctrl-C (or SIGTERM) stops after writing what is done:
    ``interrupted`` is then set, and the same call resumes."""
    options = options or ScanOptions()
    models = [models] if isinstance(models, AuditModel) else list(models)
    check_ensemble(models)
    root = dataset._root_dataset  # ``dataset`` may be a view (the App's plugin)
    db.declare_audit_fields(root)
    choice = choose_head(root, models[0], options.head)
    evidence_options = options.first_phase_evidence(choice)
    key = scan_key(models, options, choice.kind)
    out_dir = db.maps_dir(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Per-model fields of earlier ensemble scans that this one does not write: cleared on each sample
    # it redoes, so that no sample shows results of models it was not scanned with.
    model_fields = model_field_names(models)
    earlier_fields = db.audit_info(root).get("model_fields", [])
    cleared = dict.fromkeys(name for name in earlier_fields if name not in model_fields)
    writer = BulkWriter(dataset, key)
    skipped, unreadable, interrupted, started = 0, 0, False, time.perf_counter()
    with ExitStack() as engines, ScanLock(root.name, options.shard) as lock, _sigterm_as_interrupt(), \
            ExitStack() as runtimes, ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-maps") as png_writer:
        try:
            db.save_audit_info(root, scan={  # once the lock is ours: a refused scan changes nothing
                "models": [model.settings() for model in models], "key": key, "box_threshold": options.box_threshold,
                "all_boxes": options.all_boxes, "class_maps": options.class_maps,
                "second_opinion": options.second_opinion, "tool_version": settings.VERSION},
                model_fields=sorted(set(earlier_fields) | set(model_fields)),
                head=second_phase.head_info(root, choice))
            if options.engine == "ray":
                engine = engines.enter_context(RayEngine(models, options, out_dir))
            else:
                workers = [runtimes.enter_context(model_runtime(model, options)) for model in models][0]
                engine = LocalEngine(workers, png_writer)
            if options.shard == (1, 1):
                remove_temporary_maps(out_dir)
            total, done = count_shard(dataset, key, options.shard)
            skipped = 0 if options.restart else done
            todo = total - skipped if options.limit is None else min(total - skipped, options.limit)
            task = progress.add_task("scanning", total=todo) if progress else None
            this_pass = options
            for _ in range(engine.passes):  # a further pass over what a cluster's failures left undone
                pending = PendingSamples(dataset, key, this_pass, boxes=evidence_options.second_opinion)
                for rows in engine.first_phase(pending, models, options, evidence_options, choice.label_set_indices,
                                               out_dir):
                    for sample_id, fields, written in rows:
                        unreadable += bool(fields.get(names.ERROR))
                        writer.add(sample_id, {**fields, **cleared, names.HEAD_DONE: None}, written)
                    if progress:
                        progress.advance(task, len(rows))
                    writer.flush_if_due()
                    if lock.lost:
                        raise LockError(f"lost the scan lock of '{root.name}' (this process stalled for over "
                                        f"{lock.stale_after:.0f} s and another scan took over); results so far are saved")
                writer.flush()
                if writer.written >= todo:
                    break
                this_pass = replace(options, restart=False, limit=todo - writer.written)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            writer.flush()
        if options.shard == (1, 1):
            remove_temporary_maps(out_dir)  # of writers killed in this run (a lost node, a restarted actor)
        summary = ScanSummary(writer.written, skipped, unreadable, interrupted, time.perf_counter() - started,
                              writer.write_seconds, choice)
        if not interrupted:
            summary = _second_phase(root, models, key, choice, options, engine, progress, summary)
    return summary


def _second_phase(root, models: list[AuditModel], key: str, choice: HeadChoice, options: ScanOptions,
                  engine, progress, summary: ScanSummary) -> ScanSummary:
    """Run `audit.second_phase` over the dataset, one at a time (the shards of a split wait for
    each other: the last one through judges every sample); with a fitted head, take a closer look
    at the highest-scored samples (`audit.scan.top_ranked`), then score them all.
    Ctrl-C keeps what it wrote."""
    started = time.perf_counter()
    try:
        with ScanLock(root.name, kind="head", wait=True, doing="judged"):
            done = second_phase.run(root, models, key, choice, progress)
            summary.judged = done.judged
            if choice.kind == FIT and (options.second_opinion or options.class_maps):
                examined = top_ranked.examine(root, models, key, done.fitted, engine, box_threshold=options.box_threshold,
                                           batch_size=options.batch_size, progress=progress)
                summary.scoring, summary.examined = rescore(root), len(examined)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.second_phase_seconds = time.perf_counter() - started
    return summary


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler stopping the job) stops the scan like Ctrl-C: what is done is saved.
    Only where SIGTERM has its default action (not inside a server that handles it itself)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
