"""audit: find label errors and classifier failures in image datasets with Eigen-CAM and FiftyOne.

The library API, what the CLI calls (a notebook can make the same calls)::

    import audit

    dataset, added = audit.load_source(audit.SourceRequest("folder", root="photos/"))
    models = audit.load_models(["efficientnet_lite0"])
    result = audit.audit_dataset(dataset, models)           # scan + scoring, resumable
    rows = audit.ranked_rows(dataset, top=20)               # highest mislabel_score first
    audit.export_dataset(dataset, "relabel.csv")             # fill in new_label, then:
    audit.relabel_from_file(dataset, "relabel.csv")

Names are loaded on first use, so that ``import audit`` (and the CLI's start) stays quick.
"""

from __future__ import annotations

import importlib

from audit.settings import VERSION as __version__

# name -> the module that defines it
_API = {
    "AuditError": "audit.errors",
    "SourceRequest": "audit.pipeline", "AuditResult": "audit.pipeline", "load_source": "audit.pipeline",
    "audit_dataset": "audit.pipeline", "scan_progress": "audit.pipeline",
    "ScanOptions": "audit.scan.options",
    "AuditModel": "audit.models.registry", "load_model": "audit.models.registry", "load_models": "audit.models.registry",
    "model_names": "audit.models.registry", "available_models": "audit.models.registry",
    "Verdict": "audit.score.policy", "judge": "audit.score.policy",
    "rescore": "audit.score.triage", "ranked_rows": "audit.score.triage",
    "load_dataset": "audit.store.db", "delete_dataset": "audit.store.db", "flagged_view": "audit.store.db",
    "export_dataset": "audit.review.export",
    "relabel_from_file": "audit.review.relabel", "relabel_from_marks": "audit.review.relabel",
    "mark_samples": "audit.review.relabel",
    "write_report": "audit.review.report",
    "evaluate_labels": "audit.evaluate.labels", "evaluate_localization": "audit.evaluate.localization",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
