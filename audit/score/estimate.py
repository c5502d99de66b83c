"""How many labels are wrong, from the probabilities of the head that judged them; and
``mislabel_score`` calibrated to that estimate, so that a score reads as the chance that the label is wrong.

The estimate rests on one measurement the labels allow: how often they confirm the head's top
class at each confidence (``confirmed``, an isotonic fit of "top class = label" on the top class's
probability). Where the labels are right, the top class is right that often; a wrong label cannot
confirm it, so the top class is right more often than the labels say, by the share of wrong labels:
``confirmed / (1 - share)``. A sample whose label is not the top class has a wrong label as often as
its top class is right; the share is the fixed point of that count. A label the head agrees with
counts as right (the head cannot see that error). docs/label-errors.md says why this method, and
what else was measured (expected errors from the probabilities, mixtures of the scores, cleanlab's
confident joint).

The range is a bootstrap of the samples (the 5th and 95th percentiles): what another draw of the
same dataset would give, not the method's own error, which docs/label-errors.md measures."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from sklearn.isotonic import IsotonicRegression

# The confidence is fitted in at most this many bins of equal count: exact below it, and the fit
# and its bootstrap stay a few milliseconds at a million samples.
BINS = 2000
# A class's share of wrong labels is named in the summary line from this many samples on.
PER_CLASS_FROM = 20
# Bootstrap draws for the range.
RESAMPLES = 200
# Knots of the calibration map kept in dataset.info (to score a relabelled sample without a full rescore).
KNOTS = 256
# The calibrated score keeps this much of the raw score, so that it never ties two samples the raw
# score orders (the ranking, and so AP and AUROC, is the raw score's).
KEEP_ORDER = 1e-3
SEED = 0
# The review queue: the labels more likely wrong than right. On cifar10n-dev's two label sets and
# five models' probabilities its F1 is 0.002-0.020 below the best any cut of the ranking reaches in
# hindsight (8 of 10 within 0.02); the estimate's count as the queue's length is 0.01-0.07 below it
# where the estimate is low (docs/label-errors.md).
QUEUE_FROM = 0.5


@dataclass(frozen=True)
class Calibration:
    """A non-decreasing map from the raw mislabel score (the policy's ranking) to the chance that
    the label is wrong, through ``raw`` -> ``calibrated`` knots (strictly increasing both)."""

    raw: list[float]
    calibrated: list[float]

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(scores, self.raw, self.calibrated)

    def stored(self) -> dict:
        return {"raw": self.raw, "calibrated": self.calibrated}


@dataclass(frozen=True)
class LabelErrors:
    """The estimated number of wrong labels among ``labelled`` samples, with a range; per given
    class, how many of its labels are wrong and what they should be; the raw score from which a
    sample is in the review queue (the ``estimate`` most suspect labels); and the calibration."""

    estimate: int
    low: int
    high: int
    labelled: int
    per_class: dict = field(default_factory=dict)  # label -> {"labelled", "wrong", "share", "should_be": {label: n}}
    queue: int = 0  # the labels more likely wrong than right (QUEUE_FROM): the review queue's length
    threshold: float | None = None  # raw scores at or above it are in the queue (None: an empty queue)
    calibration: Calibration | None = None

    @property
    def share(self) -> float:
        return self.estimate / self.labelled if self.labelled else 0.0

    def line(self) -> str:
        """The estimate in one line, for the summary, the report and the panel."""
        if not self.labelled:
            return "label errors: no labelled sample to judge"
        worst = sorted(((label, row) for label, row in self.per_class.items()
                        if row["labelled"] >= PER_CLASS_FROM and row["wrong"] >= 1), key=lambda item: -item[1]["wrong"])[:3]
        classes = ", ".join(f"'{label}' {row['share']:.0%}" + (f" (mostly '{next(iter(row['should_be']))}')"
                                                                if row["should_be"] else "") for label, row in worst)
        most = f"; most wrong labels in {classes}" if classes else ""
        return (f"label errors: about {self.estimate:,} of {self.labelled:,} labels ({self.share:.1%}, "
                f"range {self.low:,}-{self.high:,}); {self.queue:,} more likely wrong than right to review{most}")

    def stored(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "labelled": self.labelled,
                "share": round(self.share, 4), "per_class": self.per_class, "queue": self.queue, "threshold": self.threshold,
                "calibration": self.calibration.stored() if self.calibration else None}

    @classmethod
    def read(cls, stored: dict | None) -> LabelErrors | None:
        if not stored:
            return None
        calibration = stored.get("calibration")
        return cls(estimate=stored["estimate"], low=stored["low"], high=stored["high"], labelled=stored["labelled"],
                   per_class=stored.get("per_class") or {}, queue=stored.get("queue", 0), threshold=stored.get("threshold"),
                   calibration=Calibration(**calibration) if calibration else None)


def wrong_label_chances(confidence: np.ndarray, agrees: np.ndarray) -> np.ndarray:
    """Each sample's chance that its label is wrong (0 where the label is the head's top class),
    from the top class's probability ``confidence`` and whether the label is it (``agrees``)."""
    bins = _bins(confidence)
    counts, confirmed = _bin_counts(bins, agrees)
    share = _wrong_share(counts, confirmed)
    right = np.minimum(1.0, _confirmed_rate(counts, confirmed) / (1.0 - share))
    return np.where(agrees, 0.0, right[bins])


def estimate_label_errors(*, confidence: np.ndarray, agrees: np.ndarray, raw_scores: np.ndarray, given: list[str],
                          top: list[str], resamples: int = RESAMPLES) -> tuple[LabelErrors, np.ndarray]:
    """The estimate (`LabelErrors`) and each sample's calibrated score, for the labelled samples:
    ``confidence`` the judging head's top probability, ``agrees`` whether the label is its top class,
    ``raw_scores`` the policy's mislabel scores (their order is kept), ``given`` the labels and ``top``
    the top classes (what a wrong label should be)."""
    labelled = len(confidence)
    if not labelled:
        return LabelErrors(0, 0, 0, 0), np.zeros(0)
    chances = wrong_label_chances(confidence, agrees)
    estimate = int(round(chances.sum()))
    low, high = _range(_bins(confidence), agrees, resamples)
    calibration = _calibration(raw_scores, chances)
    calibrated = calibration.apply(raw_scores)
    queued = calibrated >= QUEUE_FROM
    errors = LabelErrors(estimate=estimate, low=min(low, estimate), high=max(high, estimate), labelled=labelled,
                         per_class=_per_class(chances, given, top), queue=int(queued.sum()),
                         threshold=float(raw_scores[queued].min()) if queued.any() else None, calibration=calibration)
    return errors, calibrated


def _bins(confidence: np.ndarray) -> np.ndarray:
    """Each sample's bin: the rank of its confidence, in at most BINS bins of equal count."""
    ranks = np.empty(len(confidence), dtype=np.int64)
    ranks[np.argsort(confidence, kind="stable")] = np.arange(len(confidence))
    return ranks * min(BINS, len(confidence)) // len(confidence)


def _bin_counts(bins: np.ndarray, agrees: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    size = int(bins.max()) + 1
    counts = np.bincount(bins, weights=weights, minlength=size).astype(float)
    confirmed = np.bincount(bins, weights=agrees.astype(float) * (1.0 if weights is None else weights), minlength=size)
    return counts, confirmed


def _confirmed_rate(counts: np.ndarray, confirmed: np.ndarray) -> np.ndarray:
    """How often the labels confirm the top class, per bin of confidence: non-decreasing with it."""
    filled = counts > 0
    rate = np.zeros(len(counts))
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True)
    rate[filled] = fit.fit_transform(np.flatnonzero(filled), confirmed[filled] / counts[filled], sample_weight=counts[filled])
    return rate


def _wrong_share(counts: np.ndarray, confirmed: np.ndarray) -> float:
    """The share of wrong labels: the fixed point of share = sum over the disputed labels of
    min(1, confirmed rate / (1 - share)) / samples, reached from 0 (the smallest one)."""
    rate, disputed, total = _confirmed_rate(counts, confirmed), counts - confirmed, counts.sum()
    share = 0.0
    for _ in range(200):
        following = float((disputed * np.minimum(1.0, rate / (1.0 - min(share, 0.999)))).sum() / total)
        if abs(following - share) < 1e-7:
            break
        share = following
    return share


def _range(bins: np.ndarray, agrees: np.ndarray, resamples: int) -> tuple[int, int]:
    """The 5th and 95th percentiles of the estimate over bootstrap draws of the samples (a draw's
    counts per bin are Poisson; its confirmations binomial), scaled to the dataset's size."""
    counts, confirmed = _bin_counts(bins, agrees)
    total = counts.sum()
    rng = np.random.default_rng(SEED)
    draws = []
    for _ in range(resamples):
        drawn = rng.poisson(counts).astype(float)
        kept = rng.binomial(drawn.astype(np.int64), np.divide(confirmed, counts, out=np.zeros_like(counts), where=counts > 0))
        if drawn.sum():
            draws.append(_wrong_share(drawn, kept.astype(float)) * total)
    if not draws:
        return 0, 0
    low, high = np.percentile(draws, [5, 95])
    return int(np.floor(low)), int(np.ceil(high))


def _calibration(raw_scores: np.ndarray, chances: np.ndarray) -> Calibration:
    """The raw scores' map to the chances: the isotonic fit of the chances on the raw score, through
    KNOTS knots at its quantiles, kept strictly increasing (KEEP_ORDER)."""
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw_scores, chances)
    knots = np.unique(np.quantile(raw_scores, np.linspace(0.0, 1.0, KNOTS)))
    knots = np.unique(np.concatenate([[0.0], knots, [1.0]]))
    values = (1.0 - KEEP_ORDER) * fitted.predict(knots) + KEEP_ORDER * knots
    return Calibration(raw=[round(float(x), 6) for x in knots], calibrated=[round(float(y), 6) for y in values])


def _per_class(chances: np.ndarray, given: list[str], top: list[str]) -> dict:
    """Per given label: its samples, the estimated wrong ones and their share, and what they
    should be (the head's top class, weighed by each one's chance), most often first."""
    labelled, wrong = defaultdict(int), defaultdict(float)
    should_be: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for chance, label, best in zip(chances, given, top):
        labelled[label] += 1
        wrong[label] += chance
        if chance > 0:
            should_be[label][best] += chance
    return {label: {"labelled": labelled[label], "wrong": round(wrong[label], 1),
                    "share": round(wrong[label] / labelled[label], 4),
                    "should_be": {other: round(n, 1) for other, n in sorted(should_be[label].items(), key=lambda i: -i[1])
                                  if n >= 0.5}}
            for label in sorted(labelled, key=lambda label: -wrong[label])}
