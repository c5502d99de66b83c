"""The review queue as a reviewer works it: the flagged samples in names.REVIEW_ORDER, one stage per
category (the likely wrong labels first), each with the review marks made so far."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from audit import names

MARKS = (names.RELABEL_TAG, names.OK_TAG, names.RELABELED_TAG)


@dataclass(frozen=True)
class Stage:
    category: str
    count: int  # samples of the category
    reviewed: int  # of them, those marked relabel or label_ok, or relabelled
    marks: dict[str, int]  # how many carry each mark

    @property
    def progress(self) -> str:
        """'212 of 1,042 likely wrong labels reviewed (relabel 150 · label_ok 62)'."""
        marks = " · ".join(f"{mark} {self.marks[mark]:,}" for mark in MARKS if self.marks[mark])
        return (f"{self.reviewed:,} of {self.count:,} {names.REVIEW_STAGES[self.category]} reviewed"
                + (f" ({marks})" if marks else ""))


def review_queue(dataset) -> list[Stage]:
    """The stages of the dataset's review queue, in review order; empty categories left out."""
    if not dataset.has_sample_field(names.CATEGORY):
        return []
    categories, tags = dataset.exists(names.CATEGORY).values([names.CATEGORY, "tags"])
    counts, reviewed, marks = Counter(categories), Counter(), {c: Counter() for c in names.REVIEW_ORDER}
    for category, sample_tags in zip(categories, tags):
        if category not in marks:
            continue
        found = [mark for mark in MARKS if mark in (sample_tags or [])]
        reviewed[category] += bool(found)
        marks[category].update(found)
    return [Stage(category, counts[category], reviewed[category], {m: marks[category][m] for m in MARKS})
            for category in names.REVIEW_ORDER if counts[category]]
