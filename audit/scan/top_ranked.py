"""A closer look at the top of the ranking, with a fitted head: the mirror image, and class maps.

With a fitted head the second phase judges every sample from its stored embedding alone. Then the
highest-scored samples (TOP_SHARE of the dataset, at least TOP_AT_LEAST: the flagged ones are
about that tenth, 8 % of cifar10-dev; ranked as the scoring ranks them,
`audit.score.triage.highest_scored`) are decoded once more and their mirror image passed through
the network to the head of their own fold, one forward pass each, for:

- the mirror's distribution (the ``flip`` view), which the scoring averages with the whole image's
  (`audit.score.policy.NEUTRAL_VIEWS`); every sample is scored after it;
- their class maps (Grad-CAM of the predicted and of the given class; for the linear fold head that
  is its CAM: its weights applied at each position of the target layer), mirrored back.

Classifying the views of every sample in doubt instead (a third of cifar10-dev, up to five images
each) cost 1.4 to 3.4 times the first phase; the mirror of the top tenth keeps the ranking within
0.01 AP of it (docs/how-it-works.md#with-a-fitted-head).

What is drawn stays until the second phase judges the sample again (a relabel, a refit), which
clears it; a sample that rises into the top later (``audit rank --rescore``) gets it on the next scan.
"""

from __future__ import annotations

from dataclasses import replace

from audit import names
from audit.heads.fitted import FOLDS, FittedHeads, fold_of
from audit.models.registry import AuditModel
from audit.scan import second_phase
from audit.scan.kernel import SIGNALS_UPDATE, BulkWriter, WithFoldHead
from audit.score.triage import highest_scored
from audit.signals import Signals
from audit.store import db

# The share of the scanned samples examined, highest mislabel_score first (and at least TOP_AT_LEAST):
# the mirror of the top tenth carries nearly all of its gain (docs/how-it-works.md#with-a-fitted-head).
TOP_SHARE, TOP_AT_LEAST = 0.1, 100


def examine(root, models: list[AuditModel], scan_key: str, fitted: FittedHeads | None, engine, *,
            box_threshold: float, batch_size: int, progress=None) -> list[str]:
    """Classify the mirror image and draw the class maps of the highest-scored samples of ``root``
    (scanned under ``scan_key``; see TOP_SHARE) that lack them, through the first model's fold heads
    (``fitted``: the second phase's, or None to fit them again from the stored embeddings);
    ``engine`` decodes the images and runs the model. Returns the ids of the samples examined, to
    score again. A sample is written whole (one update): one with ``gradcam_pred`` is done."""
    scanned = second_phase.scanned_samples(root, scan_key)
    top = round(max(TOP_AT_LEAST, TOP_SHARE * len(scanned)))
    todo = scanned.select(highest_scored(scanned, top)).exists(names.GRADCAM_PRED, False)
    ids, filepaths, labels = todo.values(["id", "filepath", f"{db.label_field(root)}.label"])
    if not ids:
        return []
    fitted = fitted or second_phase.fitted_heads(root, scan_key, progress=progress)
    task = progress.add_task("top ranked: mirror, class maps", total=len(ids)) if progress else None
    writer = BulkWriter(root, None, marker=None)
    heads = {fold: WithFoldHead(models[0], fitted.heads[fold], fitted.classes) for fold in range(FOLDS)}
    items = sorted(zip(ids, filepaths, labels, (fold_of(sample_id) for sample_id in ids)), key=lambda item: item[3])
    examined = []
    for batch in engine.examine(heads, items, box_threshold, batch_size):
        readable = [(sample_id, fields) for sample_id, fields, _ in batch if fields is not None]
        stored = db.stored_dicts(root, [sample_id for sample_id, _ in readable], names.SIGNALS)
        for sample_id, fields in readable:
            update = fields.pop(SIGNALS_UPDATE)
            signals = replace(Signals.read(stored[sample_id]), class_map_on_object=update["class_map_on_object"],
                              views=update["views"])
            writer.add(sample_id, {**fields, names.SIGNALS: signals.stored()})
            examined.append(sample_id)
        if progress:
            progress.advance(task, len(batch))
        writer.flush_if_due()
    writer.flush()
    return examined
