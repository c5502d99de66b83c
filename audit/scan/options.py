"""What a scan is asked to do (`ScanOptions`), what it did (`ScanSummary`), and the key that
says whether a stored result was made with the same settings (`scan_key`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from audit import settings
from audit.explain.boxes import DEFAULT_THRESHOLD
from audit.heads.choice import MODEL, HeadChoice
from audit.models.registry import AuditModel
from audit.scan.evidence import EvidenceOptions
from audit.score.triage import ScoringSummary

SCAN_VERSION = 7  # bump when the fields a scan writes change meaning: older results are redone
ENGINES = ("local", "ray")


@dataclass
class ClusterOptions:
    """Where and how ``--engine ray`` runs (`audit.ray_engine`)."""

    address: str | None = None  # "auto", HOST:PORT, or None: RAY_ADDRESS / a running cluster, else a local instance
    actors: int | None = None  # model replicas; None: one per GPU (with GPUs), else one per node
    gpus_per_actor: float | None = None  # None: 1 where the cluster has GPUs, else 0


@dataclass
class ScanOptions:
    batch_size: int = settings.DEFAULT_BATCH_SIZE
    workers: int | None = None  # decoding processes; None: by device and cores (`plan_resources`)
    limit: int | None = None
    shard: tuple[int, int] = (1, 1)  # (I, N): this process scans the I-th of N deterministic parts
    restart: bool = False
    box_threshold: float = DEFAULT_THRESHOLD
    all_boxes: bool = False  # a box for every large Eigen-CAM segment, not only the largest
    class_maps: bool = True  # class-discriminative maps for the predicted and the given class
    second_opinion: bool = True  # views of the samples in doubt (audit.evidence; fitted head: audit.scan.top_ranked)
    amp: bool | None = None  # mixed precision for the forward pass; None: on CUDA only
    threads: int | None = None  # torch threads of this process; None: torch's own default
    head: str = "auto"  # which head judges the labels: auto, model or fit (see `audit.head_choice`)
    engine: str = "local"  # local: this machine's processes; ray: a Ray cluster (`audit.ray_engine`)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    def evidence(self) -> EvidenceOptions:
        return EvidenceOptions(self.box_threshold, self.all_boxes, self.class_maps, self.second_opinion)

    def first_phase_evidence(self, choice: HeadChoice) -> EvidenceOptions:
        """With a fitted head, the class maps and second opinions wait for the head (the second phase);
        with the user's predictions they are the model's where its head knows the labels, else none."""
        evidence = self.evidence()
        return evidence if choice.class_maps_first else EvidenceOptions(self.box_threshold, self.all_boxes, False, False)


@dataclass
class ScanSummary:
    scanned: int
    skipped: int
    unreadable: int
    interrupted: bool = False
    seconds: float = 0.0  # wall time of the streaming loop
    write_seconds: float = 0.0  # of which spent writing to the database
    head: HeadChoice | None = None
    judged: int = 0  # samples the second phase wrote (neighbours; with a fitted head, its probabilities)
    examined: int = 0  # with a fitted head: top-ranked samples given class maps and the mirror's view through it
    second_phase_seconds: float = 0.0  # the second phase, and with a fitted head the scoring and the top-ranked samples
    scoring: ScoringSummary | None = None  # with a fitted head: the scoring, done by the scan


def scan_key(models: list[AuditModel], options: ScanOptions, head: str = MODEL) -> str:
    """A digest of everything that changes the first phase's results; samples done under another key are redone."""
    settings_ = {"models": [model.settings() for model in models], "box_threshold": options.box_threshold,
                 "version": SCAN_VERSION}
    if head != MODEL:
        settings_["head"] = head
    for name in ("class_maps", "second_opinion"):  # named only when off
        if not getattr(options, name):
            settings_[name] = False
    if options.all_boxes:
        settings_["all_boxes"] = True
    return hashlib.sha256(json.dumps(settings_, sort_keys=True).encode()).hexdigest()[:16]
