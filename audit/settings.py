"""Defaults and environment in one place: FiftyOne set-up, where map files go, scan defaults."""

from __future__ import annotations

import os
from pathlib import Path

# FiftyOne reads these at import: no usage tracking; our bundled mongod is older than it likes.
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

VERSION = "0.1.0"  # the tool's version, recorded in each run's settings
PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_DATA_DIR = PACKAGE_DIR.parent / "sample_data"

DEFAULT_BATCH_SIZE = 32
DEFAULT_APP_ADDRESS = "127.0.0.1"  # the App serves this machine only unless told otherwise
MAP_MAX_SIDE = 224  # heatmap files are stored at most this many pixels on their longer side
SMALL_MAP_SIDE = 64  # the second component and the class maps are stored inline, this small
FLUSH_EVERY_SAMPLES = int(os.environ.get("AUDIT_FLUSH_EVERY", 256))  # bulk writes to the database at least this often
DATABASE_TIMEOUT_SECONDS = float(os.environ.get("AUDIT_DATABASE_TIMEOUT", 5))  # to reach FIFTYONE_DATABASE_URI
LOCK_STALE_SECONDS = float(os.environ.get("AUDIT_LOCK_STALE_SECONDS", 300))  # a scan lock without heartbeat this long is dead


def default_workers() -> int:
    """Image-decoding worker processes: one core is left to the model."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))
