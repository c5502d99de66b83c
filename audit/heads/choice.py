"""Which head judges a dataset's labels: the model's own classes, or a head fitted on the dataset.

``auto`` (the default) takes the model's head when the labels are the model's classes (an ImageNet
model on ImageNet labels, or on a part of them such as imagenette's ten), and a fitted head
(`audit.heads.fitted`) as soon as a label that is not one of them is a class of the dataset's own:
carried by at least OWN_CLASS_SAMPLES samples. Fewer are stray labels (a typo, a leftover), said
to be unknown to the model, on samples the model's head judges. On imagenette, the model's head over all
its classes ranks the human-verified errors better than the same head restricted to the dataset's
ten classes (benchmarks/any_labels.py): a photo showing none of the ten is only seen as such by a
head that knows other classes. So the restriction is not a head of its own; what it would add, the
probability outside the dataset's classes, is the signal ``outside_prob``.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.errors import OptionError
from audit.models.registry import AuditModel, model_class_index
from audit.store import db

HEADS = ("auto", "model", "fit", "given")
MODEL_LABEL_SET_SOURCES = ("imagenet-val", "sample")  # sources labelled in the model's own classes
OWN_CLASS_SAMPLES = 5  # a fitted head's folds: fewer samples of a class are too few to fit on
MODEL, FIT, GIVEN = "model", "fit", "given"


@dataclass(frozen=True)
class HeadChoice:
    """The head a scan judges the labels with, and why (said in the summary and in ``dataset.info``)."""

    kind: str  # MODEL, FIT or GIVEN
    why: str
    # The model's indices of the dataset's classes, where the labels are some of the model's classes only.
    label_set_indices: list[int] | None = None
    # The model's head knows every label (GIVEN: its class maps and second opinions are drawn in the first phase).
    model_knows_labels: bool = False

    def info(self) -> dict:
        return {"kind": self.kind, "why": self.why}

    @property
    def class_maps_first(self) -> bool:
        """The model's own head draws the class maps and second opinions in the first phase."""
        return self.kind == MODEL or (self.kind == GIVEN and self.model_knows_labels)


def choose_head(dataset, model: AuditModel, requested: str = "auto") -> HeadChoice:
    """The head for ``dataset``'s labels (``requested``: auto, model, fit or given)."""
    if requested not in HEADS:
        raise OptionError(f"'{requested}' is not one of {', '.join(HEADS)}", "--head")
    field = db.label_field(dataset)
    counts = dataset.count_values(f"{field}.label") if dataset.has_sample_field(field) else {}
    labels = sorted(label for label in counts if label is not None)
    indices = {label: model_class_index(model, label) for label in labels}
    given = db.audit_info(dataset).get("predictions")
    if requested == GIVEN and not given:
        raise OptionError("--head given judges with your predictions: pass them with --predictions", "--head")
    if given and requested in ("auto", GIVEN):
        why = "asked for (--head given)" if requested == GIVEN else f"your predictions, {given['source']}"
        return HeadChoice(GIVEN, why, None, model_knows_labels=all(i is not None for i in indices.values()))
    outside = [label for label, index in indices.items() if index is None and counts[label] >= OWN_CLASS_SAMPLES]
    subset = sorted({index for index in indices.values() if index is not None})
    strays = any(index is None for index in indices.values())
    some = subset if not strays and 0 < len(subset) < len(model.classes) and not _model_labelled(dataset) else None
    if requested == FIT or (requested == "auto" and outside):
        if requested == FIT:
            why = "asked for (--head fit)"
        else:
            named = ", ".join(f"'{label}'" for label in outside[:3]) + (" ..." if len(outside) > 3 else "")
            why = f"{len(outside)} of the {len(labels)} labels are not classes of {model.name} ({named})"
        return HeadChoice(FIT, why, None)
    if requested == MODEL:
        why = "asked for (--head model)"
    elif some:
        why = f"the {len(labels)} labels are classes of {model.name}"
    else:
        why = f"the labels are {model.name}'s classes"
    return HeadChoice(MODEL, why, some)


def head_kind(dataset) -> str | None:
    """The head the dataset's last scan judged its labels with: MODEL, FIT or GIVEN (None before any scan)."""
    return db.audit_info(dataset).get("head", {}).get("kind")


def _model_labelled(dataset) -> bool:
    """Sources labelled in the model's own classes (ImageNet's 1000), whatever part of them they use."""
    return db.audit_info(dataset).get("source") in MODEL_LABEL_SET_SOURCES
