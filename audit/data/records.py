"""What every source loader yields: one plain record per image, before it becomes a FiftyOne sample."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from audit.errors import AuditError


@dataclass(frozen=True)
class GroundTruthBox:
    """A ground-truth box in absolute pixels of the image file as stored (x1, y1, x2, y2)."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class Record:
    """One image of a source: its absolute path, the label as given (or None), optional boxes and,
    when the source knows it without decoding, the image size (width, height)."""

    filepath: str
    label: str | None
    boxes: list[GroundTruthBox] = field(default_factory=list)
    width: int | None = None
    height: int | None = None


class SourceError(AuditError):
    """A source could not be read; the message is one line that names the file and what was expected."""


def absolute_path(path: str | os.PathLike) -> str:
    """The absolute path with its links resolved; only made absolute when it cannot be resolved
    (a symlink loop), so that the sample is kept and the scan reports it as unreadable, with the reason."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):  # RuntimeError: "Symlink loop from ..." (Python < 3.13)
        return os.path.abspath(path)
