"""The stored signals (``audit_signals``): what the scan measures on each sample and the scoring reads."""

from __future__ import annotations


def normalised_margin(given_prob: float, max_other_prob: float) -> float:
    """cleanlab's normalised margin, p(given) - max p(other), in [-1, 1]: higher = the label better supported."""
    return given_prob - max_other_prob
