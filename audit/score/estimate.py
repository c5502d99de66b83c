"""How many labels are wrong, from the probabilities of the head that judged them; and
``mislabel_score`` calibrated to that estimate, so that a score reads as the chance that the label is wrong.

What a disagreement means depends on how the probabilities were made, so there are two methods
(docs/label-errors.md measures both on every truth, and what else was tried):

- ``confirmation``, for a trained network's probabilities (the model's own head, your classifier,
  your predictions), whose confidence says little by itself (out-of-fold networks trained on these
  labels are underconfident: the temperature that fits the true labels is 0.3-0.6). It rests on
  what the labels show: how often they confirm the head's top class at each confidence (an
  isotonic fit). A wrong label cannot confirm it, so the top class is right more often than that,
  by the share of wrong labels: ``confirmed / (1 - share)``; a sample whose label is not the top
  class has a wrong label that often, and the share is the fixed point of that count. A label the
  head agrees with counts as right (the head cannot see that error).
- ``noise matrix``, for a head fitted out of fold on the embeddings (logistic regression, calibrated
  to the labels): the head's probabilities are the classes' prior, and a matrix of which class is
  labelled as which is fitted by expectation-maximisation (Dawid and Skene's, with one rater); a
  label's chance of being wrong is its posterior. A weak head's many unsure disagreements are
  its own errors, not the labels'.

The range is a bootstrap of the samples (the 5th and 95th percentiles): what another draw of the
same dataset would give, not the method's own error, which docs/label-errors.md measures."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from sklearn.isotonic import IsotonicRegression

# The confidence is fitted in at most this many bins of equal count: exact below it, and the fit
# and its bootstrap cheap at any size (the whole estimate of a million samples, calibration included,
# takes 2 s; the noise matrix's, 24 s).
BINS = 2000
# A class's share of wrong labels is named in the summary line from this many samples on.
PER_CLASS_FROM = 20
# The head's own confidence counts as this many samples' confirmations of its top class (spread over
# the confidence): it decides a dataset of a few photos, and hardly moves one of thousands.
PRIOR_SAMPLES = 5
# Bootstrap draws for the range; the noise matrix's (a fit each) fewer, of at most RANGE_ROWS rows.
RESAMPLES = 200
RANGE_DRAWS = 30
RANGE_ROWS = 20_000
# The noise matrix's smoothing: this many samples' worth per cell, before the fit's own counts.
SMOOTHING = 1e-3
# Knots of the calibration map kept in dataset.info (to score a relabelled sample without a full rescore).
KNOTS = 256
# The calibrated score keeps this much of the raw score, so that it never ties two samples the raw
# score orders (the ranking, and so AP and AUROC, is the raw score's).
KEEP_ORDER = 1e-6
SEED = 0
# The review queue: the labels more likely wrong than right. On cifar10n-dev's two label sets and
# five models' probabilities its F1 is 0.002-0.020 below the best any cut of the ranking reaches in
# hindsight; the estimate's count as the queue's length is 0.01-0.07 below it where the estimate is
# low (docs/label-errors.md).
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
    class, how many of its labels are wrong and what they should be; the review queue's length (the
    categories', `audit.score.triage.rescore`); and the calibration."""

    estimate: int
    low: int
    high: int
    labelled: int
    per_class: dict = field(default_factory=dict)  # label -> {"labelled", "wrong", "share", "should_be": {label: n}}
    queue: int = 0  # the labels more likely wrong than right (QUEUE_FROM): the review queue's length
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
                "share": round(self.share, 4), "per_class": self.per_class, "queue": self.queue,
                "calibration": self.calibration.stored() if self.calibration else None}

    @classmethod
    def read(cls, stored: dict | None) -> LabelErrors | None:
        if not stored:
            return None
        calibration = stored.get("calibration")
        return cls(estimate=stored["estimate"], low=stored["low"], high=stored["high"], labelled=stored["labelled"],
                   per_class=stored.get("per_class") or {}, queue=stored.get("queue", 0),
                   calibration=Calibration(**calibration) if calibration else None)


def wrong_label_chances(confidence: np.ndarray, agrees: np.ndarray) -> np.ndarray:
    """Each sample's chance that its label is wrong (0 where the label is the head's top class),
    from the top class's probability ``confidence`` and whether the label is it (``agrees``)."""
    bins = _bins(confidence)
    counts, confirmed, prior = _bin_counts(bins, agrees, confidence)
    share = _wrong_share(counts, confirmed, prior)
    right = np.minimum(1.0, _confirmed_rate(counts, confirmed, prior) / (1.0 - min(share, 0.999)))
    return np.where(agrees, 0.0, right[bins])


def noise_matrix_chances(probabilities: np.ndarray, labels: np.ndarray, *, iterations: int = 100) -> np.ndarray:
    """Each sample's chance that its label (column index in ``labels``) is wrong: the posterior of
    a class-to-label noise matrix fitted by expectation-maximisation, the head's ``probabilities``
    (N x K) the prior of each sample's true class. The matrix starts at 95 % right labels and is
    smoothed by a small count (SMOOTHING) so that a class nobody is labelled with stays defined."""
    classes = probabilities.shape[1]
    noise = np.full((classes, classes), 0.05 / max(classes - 1, 1))
    np.fill_diagonal(noise, 0.95)
    rows = np.arange(len(labels))
    for _ in range(iterations):
        posterior = probabilities * noise[:, labels].T  # p(true class i | x) * p(label | i)
        posterior /= np.maximum(posterior.sum(axis=1, keepdims=True), 1e-300)
        counts = np.full((classes, classes), SMOOTHING)
        np.add.at(counts.T, labels, posterior)
        following = counts / counts.sum(axis=1, keepdims=True)
        if np.abs(following - noise).max() < 1e-6:
            break
        noise = following
    return 1.0 - posterior[rows, labels]


def estimate_label_errors(*, confidence: np.ndarray, agrees: np.ndarray, raw_scores: np.ndarray, given: list[str],
                          top: list[str], probabilities: np.ndarray | None = None, labels: np.ndarray | None = None,
                          resamples: int = RESAMPLES) -> tuple[LabelErrors, np.ndarray]:
    """The estimate (`LabelErrors`) and each sample's calibrated score, for the labelled samples:
    ``confidence`` the judging head's top probability, ``agrees`` whether the label is its top class,
    ``raw_scores`` the policy's mislabel scores (their order is kept), ``given`` the labels and ``top``
    the top classes (what a wrong label should be). With ``probabilities`` (N x K) and ``labels``
    (their columns), the noise-matrix method (a fitted head's); else the confirmation method."""
    labelled = len(confidence)
    if not labelled:
        return LabelErrors(0, 0, 0, 0), np.zeros(0)
    if probabilities is None:
        chances = wrong_label_chances(confidence, agrees)
        low, high = _range(_bins(confidence), agrees, confidence, resamples)
    else:
        chances = noise_matrix_chances(probabilities, labels)
        low, high = _noise_matrix_range(probabilities, labels, resamples)
    estimate = int(round(chances.sum()))
    calibration = _calibration(raw_scores, chances)
    errors = LabelErrors(estimate=estimate, low=min(low, estimate), high=max(high, estimate), labelled=labelled,
                         per_class=_per_class(chances, given, top), calibration=calibration)
    return errors, calibration.apply(raw_scores)


def _bins(confidence: np.ndarray) -> np.ndarray:
    """Each sample's bin: the rank of its confidence, in at most BINS bins of equal count."""
    ranks = np.empty(len(confidence), dtype=np.int64)
    ranks[np.argsort(confidence, kind="stable")] = np.arange(len(confidence))
    return ranks * min(BINS, len(confidence)) // len(confidence)


def _bin_counts(bins: np.ndarray, agrees: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: its samples, how many of their labels confirm the top class, and their mean confidence."""
    size = int(bins.max()) + 1
    counts = np.bincount(bins, minlength=size).astype(float)
    confirmed = np.bincount(bins, weights=agrees.astype(float), minlength=size)
    prior = np.bincount(bins, weights=confidence, minlength=size) / np.maximum(counts, 1.0)
    return counts, confirmed, prior


def _confirmed_rate(counts: np.ndarray, confirmed: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """How often the labels confirm the top class, per bin of confidence: non-decreasing with it.
    The head's own confidence (``prior``) stands in for PRIOR_SAMPLES samples' confirmations, spread
    over the bins: it decides a small dataset, and no more than that in a large one."""
    pseudo = PRIOR_SAMPLES * counts / counts.sum()
    filled = counts > 0
    rate = np.zeros(len(counts))
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True)
    weight = (counts + pseudo)[filled]
    smoothed = (confirmed + pseudo * prior)[filled] / weight
    rate[filled] = fit.fit_transform(np.flatnonzero(filled), smoothed, sample_weight=weight)
    return rate


def _wrong_share(counts: np.ndarray, confirmed: np.ndarray, prior: np.ndarray) -> float:
    """The share of wrong labels: the fixed point of share = sum over the disputed labels of
    min(1, confirmed rate / (1 - share)) / samples, reached from 0 (the smallest one)."""
    rate, disputed, total = _confirmed_rate(counts, confirmed, prior), counts - confirmed, counts.sum()
    share = 0.0
    for _ in range(200):
        following = float((disputed * np.minimum(1.0, rate / (1.0 - min(share, 0.999)))).sum() / total)
        if abs(following - share) < 1e-7:
            break
        share = following
    return share


def _range(bins: np.ndarray, agrees: np.ndarray, confidence: np.ndarray, resamples: int) -> tuple[int, int]:
    """The 5th and 95th percentiles of the estimate over bootstrap draws of the samples (a draw's
    counts per bin are Poisson; its confirmations binomial), scaled to the dataset's size."""
    counts, confirmed, prior = _bin_counts(bins, agrees, confidence)
    total = counts.sum()
    rng = np.random.default_rng(SEED)
    draws = []
    for _ in range(resamples):
        drawn = rng.poisson(counts).astype(float)
        kept = rng.binomial(drawn.astype(np.int64), np.divide(confirmed, counts, out=np.zeros_like(counts), where=counts > 0))
        if drawn.sum():
            draws.append(_wrong_share(drawn, kept.astype(float), prior) * total)
    if not draws:
        return 0, 0
    low, high = np.percentile(draws, [5, 95])
    return int(np.floor(low)), int(np.ceil(high))


def _noise_matrix_range(probabilities: np.ndarray, labels: np.ndarray, resamples: int) -> tuple[int, int]:
    """The noise matrix's estimate over bootstrap draws (RANGE_DRAWS of at most RANGE_ROWS rows each,
    scaled to the dataset's size): its 5th and 95th percentiles."""
    rng = np.random.default_rng(SEED)
    size = min(len(labels), RANGE_ROWS)
    draws = []
    for _ in range(min(resamples, RANGE_DRAWS)):
        rows = rng.integers(0, len(labels), size)
        draws.append(noise_matrix_chances(probabilities[rows], labels[rows], iterations=50).mean() * len(labels))
    low, high = np.percentile(draws, [5, 95])
    return int(np.floor(low)), int(np.ceil(high))


def _calibration(raw_scores: np.ndarray, chances: np.ndarray) -> Calibration:
    """The raw scores' map to the chances: the isotonic fit of the chances on the raw score, through
    KNOTS knots at its quantiles, kept strictly increasing (KEEP_ORDER)."""
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw_scores, chances)
    knots = np.unique(np.quantile(raw_scores, np.linspace(0.0, 1.0, KNOTS)))
    knots = np.unique(np.concatenate([[0.0], knots, [1.0]]))
    values = (1.0 - KEEP_ORDER) * fitted.predict(knots) + KEEP_ORDER * knots
    return Calibration(raw=[float(x) for x in knots], calibrated=[float(y) for y in values])


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
