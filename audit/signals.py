"""The stored signals (``audit_signals``), the one place that names their keys: what the scan
measures on each sample (`audit.scan.evidence`, `audit.scan.second_phase`, `audit.heads.neighbours`)
and the scoring reads (`audit.score.policy`). Stored as a plain dict (a FiftyOne DictField, so the
App and MongoDB can filter on it); written with ``stored()`` and read back with ``read()``. A key that
is absent is None here."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

# The keys that depend on the given label beyond the whole image's top classes: a sample relabelled
# since its scan drops them until it is scanned again (`audit.score.policy.for_new_label`).
LABEL_DEPENDENT = ("views", "consensus", "class_map_on_object", "in_set", "given_prob", "max_other_prob",
                   "given_rank", "label_quantile")


# An Eigen-CAM box covering at least this share of the view the model saw singles out no one object
# (the scoring names it in the reasons; the App's saved views leave such a box out).
WHOLE_VIEW = 0.9


def box_share_of_view(cam_box_area: float | None, visible_fraction: float | None) -> float:
    """The Eigen-CAM box's share of what the model saw (the image after its crop), at most 1:
    near 1, the box singles out no one object (WHOLE_VIEW)."""
    return min((cam_box_area or 0.0) / (visible_fraction or 1.0), 1.0)


def normalised_margin(given_prob: float, max_other_prob: float) -> float:
    """cleanlab's normalised margin, p(given) - max p(other), in [-1, 1]: higher = the label better supported."""
    return given_prob - max_other_prob


class _Stored:
    """``stored()``: the dataclass as the dict kept in the database, absent keys for None."""

    def stored(self) -> dict:
        out = {}
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, _Stored):
                value = value.stored()
            elif isinstance(value, dict) and value and all(isinstance(v, _Stored) for v in value.values()):
                value = {key: member.stored() for key, member in value.items()}
            out[name] = value
        return out

    @classmethod
    def _values(cls, stored: dict) -> dict:
        return {f.name: stored.get(f.name) for f in fields(cls)}


@dataclass(frozen=True)
class Distribution(_Stored):
    """One class distribution: the whole image, a second-opinion view, one model of an ensemble, or
    the dataset's classes alone (``in_set``). Probabilities in [0, 1]."""

    top_label: str | None = None  # the most probable class
    top_prob: float | None = None
    top_index: int | None = None
    top: list | None = None  # [class, probability] pairs, most probable first (absent in scans before version 4)
    given_prob: float | None = None  # the given label's probability: higher = the label better supported
    max_other_prob: float | None = None  # the best other class's: higher = the label more contested
    given_rank: int | None = None  # 1 = the label is the top class
    top_other: str | None = None  # ``in_set``: the best of the dataset's other classes

    @classmethod
    def read(cls, stored: dict | None) -> Distribution | None:
        return None if stored is None else cls(**{k: v for k, v in cls._values(stored).items() if v is not None})


@dataclass(frozen=True)
class Duplicate(_Stored):
    """A near-duplicate labelled otherwise (cosine at or above `audit.heads.neighbours.DUPLICATE_SIMILARITY`)."""

    filepath: str
    label: str
    similarity: float  # cosine of the two embeddings: 1 = the same picture

    @classmethod
    def read(cls, stored: dict | None) -> Duplicate | None:
        return None if stored is None else cls(**cls._values(stored))


@dataclass(frozen=True)
class NeighbourVote(_Stored):
    """What the nearest samples in embedding space say (`audit.heads.neighbours.votes`)."""

    k: int = 0  # labelled neighbours that voted
    other_share: float = 0.0  # share of them labelled otherwise: higher = the label more suspect
    label: str | None = None  # their most common label
    label_share: float = 0.0  # its share
    similarity: float = 0.0  # mean cosine to them
    unlike: float = 0.0  # share of the dataset more alike its neighbours: near 1 = like none of them
    duplicate: Duplicate | None = None

    @classmethod
    def read(cls, stored: dict | None) -> NeighbourVote | None:
        if stored is None:
            return None
        values = {k: v for k, v in cls._values(stored).items() if v is not None}
        return cls(**{**values, "duplicate": Duplicate.read(stored.get("duplicate"))})


@dataclass(frozen=True)
class Signals(_Stored):
    """Everything the scoring reads of one sample. Whole-image figures are the ensemble's mean
    probabilities when several models scanned, a fitted head's out-of-fold ones with ``head`` = fit."""

    error: str | None = None  # why the image could not be read; nothing else is then stored
    relabelled_from: str | None = None  # the label at scan time, for a sample relabelled since
    # the whole image
    pred_index: int | None = None
    pred_label: str | None = None
    pred_prob: float | None = None
    top_labels: list | None = None  # the five most probable classes
    top_probs: list | None = None
    top: list | None = None  # [class, probability] pairs, more of them (what the consensus averages)
    given_label: str | None = None
    given_index: int | None = None  # the label's index among the head's classes; None: not one of them
    given_class: str | None = None  # the label as the head names it
    given_prob: float | None = None
    max_other_prob: float | None = None
    given_rank: int | None = None
    given_prob_bound: bool | None = None  # given_prob is an upper bound (a relabel to a class outside the stored top)
    # the first model's Eigen-CAM
    cam_variance_ratio: list | None = None  # the share of the activations' variance of each principal component
    visible_fraction: float | None = None  # the share of the image the model saw (after its crop)
    cam_box_area: float | None = None  # the Eigen-CAM box's share of the image
    second_object_iou: float | None = None  # IoU of the second component's box with the first's: 1 = same region
    class_map_on_object: dict | None = None  # share of each class map (pred, given) inside the Eigen-CAM box
    # the labels are some of the model's classes
    outside_prob: float | None = None  # probability outside the dataset's classes: high = none of them fits
    in_set: Distribution | None = None  # the whole image among the dataset's classes alone
    # second opinions, ensembles, neighbours
    views: dict | None = None  # view name -> Distribution (flip, object, gt_box, given_evidence, second_object)
    consensus: Distribution | None = None  # the stored consensus of scans before version 4
    models: dict | None = None  # ensemble member -> its own Distribution
    models_agree: float | None = None  # share of the members whose top-1 is the ensemble's (1 = all)
    box_iou: float | None = None  # mean IoU of the members' Eigen-CAM boxes
    neighbours: NeighbourVote | None = None
    # a fitted head (the second phase)
    head: str | None = None  # "fit": a head fitted on the embeddings judged; "given": the user's predictions
    classes: int | None = None  # how many classes it knows
    class_seen: int | None = None  # samples of the given label the sample's fold head was fitted on
    class_examples: int | None = None  # samples carrying the given label
    model_top: list | None = None  # the model's own top classes, [class, probability] pairs
    # the user's predictions (the second phase, head = "given")
    label_quantile: float | None = None  # how suspect the label is against the dataset's others: 1 = the most

    @classmethod
    def read(cls, stored: dict) -> Signals:
        values = cls._values(stored)
        for name in ("views", "models"):
            if values[name] is not None:
                values[name] = {key: Distribution.read(member) for key, member in values[name].items()}
        values.update(in_set=Distribution.read(values["in_set"]), consensus=Distribution.read(values["consensus"]),
                      neighbours=NeighbourVote.read(values["neighbours"]))
        return cls(**values)

    def whole_image(self) -> Distribution:
        """The whole image's distribution (the head's prediction and the label's standing)."""
        return Distribution(top_label=self.pred_label, top_prob=self.pred_prob, top_index=self.pred_index,
                            top=self.top, given_prob=self.given_prob, max_other_prob=self.max_other_prob,
                            given_rank=self.given_rank)

    def without(self, *names: str) -> Signals:
        """These signals with ``names`` absent."""
        return replace(self, **dict.fromkeys(names))
