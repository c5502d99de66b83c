"""Output files written the safe way: never over an existing file unless asked, and atomically
(a temporary file beside the target, renamed into place), readable like any file the user makes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_output(out: Path, overwrite: bool, error: type[Exception]) -> None:
    """Raise ``error`` with one line when ``out`` exists (and not ``overwrite``) or its folder is missing."""
    if out.exists() and not overwrite:
        raise error(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        if out.parent.exists():
            raise error(f"cannot write {out}: {out.parent} is not a folder")
        raise error(f"folder not found: {out.parent}")


@contextmanager
def atomic_output(out: Path, error: type[Exception], newline: str | None = None) -> Iterator:
    """A text handle whose content replaces ``out`` when the block ends without an exception."""
    try:
        handle = tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, newline=newline, encoding="utf-8",
                                             prefix=f".{out.name}.", suffix=".tmp")
    except OSError as failure:
        raise error(f"cannot write to {out.parent}: {failure.strerror}") from None
    try:
        with handle:
            yield handle
    except BaseException:
        os.unlink(handle.name)
        raise
    os.chmod(handle.name, 0o666 & ~_umask())  # a temporary file is private; the result is not
    os.replace(handle.name, out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
