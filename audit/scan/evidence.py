"""Evidence from one batch, for one model or an ensemble: class probabilities, Eigen-CAM maps and
boxes in image coordinates, class maps for the predicted and the given class, second opinions
where they are needed, and the FiftyOne fields the scan writes from all of it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from PIL import Image

from audit import names, settings
from audit.boxformat import to_corners, to_relative
from audit.explain import (
    DEFAULT_THRESHOLD,
    box_iou,
    boxes_from_map,
    class_maps,
    eigen_cam,
    map_to_image,
    normalise_maps,
    visible_fraction,
)
from audit.images import open_rgb
from audit.models.registry import AuditModel
from audit.signals import Distribution, Signals, normalised_margin
from audit.store import db

TOP_K = 5
CROP_PAD = 0.1  # a crop for a second opinion is grown by this share of the box on each side
# Second opinions are asked for the samples whose whole-image p(given) - max p(other) is below this:
# every sample whose prediction differs from its label, and the narrow agreements. On the dev set
# that is about a fifth of the samples, and ranking them with views only loses nothing
# (AP 0.381 against 0.380 with views for all).
SECOND_OPINION_MARGIN = 0.2
# The given label's evidence region: where its Grad-CAM is at least this share of its maximum.
EVIDENCE_THRESHOLD = 0.5
VIEWS = ("flip", "object", "gt_box", "given_evidence", "second_object")
# Classes kept of each distribution (the whole image, each view): enough for the scoring to average
# the views itself (`audit.score.policy.consensus`), so that ``audit rank --rescore`` can change how.
DISTRIBUTION_TOP_K = 10
# Stored maps are 0 below this share of their peak (see `to_uint8`); the boxes are found at 0.15 and up.
MAP_FLOOR = 0.1


class Batch(TypedDict, total=False):
    """A batch as the scan's loader collates it (``audit.scan.local.ImageFiles``), one entry per image."""

    index: list[str]  # sample ids
    filepath: list[str]
    images: list[torch.Tensor]  # one (B, 3, H, W) tensor per model, each in its own preprocessing
    width: torch.Tensor  # the decoded image's size as a viewer shows it (EXIF applied)
    height: torch.Tensor
    error: list[str]  # why an image could not be read, "" when it could
    gt_boxes: list[list[list[float]] | None]  # relative [x, y, w, h] ground-truth boxes, when wanted


@dataclass
class ModelEvidence:
    """What one model finds in one image, from one forward pass."""

    probabilities: torch.Tensor  # softmax over the model's classes, of the whole image
    map: np.ndarray  # the first Eigen-CAM component in the image's frame, uint8, at most MAP_MAX_SIDE a side
    boxes: list[list[float]]  # relative [x, y, w, h] of the map's segments, the largest first
    variance_ratio: list[float]  # share of the activations' variance of the first two components
    visible_fraction: float  # share of the image the model saw (after its crop)
    pc2: np.ndarray  # the second component, small (SMALL_MAP_SIDE), uint8
    class_maps: dict[str, np.ndarray] = field(default_factory=dict)  # "pred"/"given": Grad-CAM, small, uint8
    on_object: dict[str, float] = field(default_factory=dict)  # share of each class map inside the first box
    given_evidence_box: list[float] | None = None  # where the given class's Grad-CAM is >= EVIDENCE_THRESHOLD
    second_object_box: list[float] | None = None  # the second component's largest segment; for samples in doubt
    embedding: np.ndarray | None = None  # the target layer average-pooled (what a pooling head reads), float32


@dataclass
class SampleEvidence:
    """Every model's evidence for one image, and the second opinions asked for it."""

    results: list[ModelEvidence]  # one per model, in the scan's order
    views: list[dict[str, torch.Tensor]]  # per model: view name -> probabilities (empty when none were asked)


@dataclass
class EvidenceOptions:
    """What to compute for each sample beyond the probabilities and the first Eigen-CAM component."""

    box_threshold: float = DEFAULT_THRESHOLD
    all_boxes: bool = False  # every Eigen-CAM segment above 2 % of the image, not only the largest
    class_maps: bool = True  # Grad-CAM for the predicted and the given class, through the head only
    second_opinion: bool = True  # classify the mirror image and the crops of the dominant and annotated object


def field_suffix(model: AuditModel) -> str:
    """The per-model field suffix of an ensemble member: ``timm:resnet50`` -> ``timm_resnet50``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", model.name).strip("_").lower()


# --- one model over one batch -------------------------------------------------------------------


@torch.inference_mode()
def explain_batch(model: AuditModel, images: torch.Tensor, batch: Batch, options: EvidenceOptions,
                  given_indices: list[int | None]) -> list[ModelEvidence | None]:
    """Per sample, its `ModelEvidence` (None where the image could not be read); the class maps,
    their shares on the object and the given label's evidence box only with ``options.class_maps``."""
    images = images.to(model.device, non_blocking=True)
    logits, activations = model.forward(images)
    probabilities = torch.softmax(logits.float(), dim=1).cpu()
    target = activations[model.target_layer].float()
    maps, variance_ratio = eigen_cam(target, k=2)
    maps = normalise_maps(maps).cpu().numpy()
    variance_ratio = variance_ratio.cpu().numpy()
    embeddings = target.mean(dim=(2, 3)).cpu().numpy()
    predicted = probabilities.argmax(1)
    if options.class_maps:
        given = torch.tensor([int(predicted[row]) if g is None else g for row, g in enumerate(given_indices)])
        discriminative = normalise_maps(class_maps(target, model.head(), torch.stack([predicted, given], 1))).cpu().numpy()
    results = []
    for row in range(images.shape[0]):
        if batch["error"][row]:
            results.append(None)
            continue
        width, height = int(batch["width"][row]), int(batch["height"][row])
        image_map, boxes = map_and_boxes(model, maps[row, 0], width, height, options.box_threshold, options.all_boxes)
        result = ModelEvidence(
            probabilities=probabilities[row], map=to_uint8(image_map), boxes=boxes,
            variance_ratio=[float(v) for v in variance_ratio[row]],
            visible_fraction=float(visible_fraction(model.preprocess.window(width, height), width, height)),
            pc2=to_uint8(small_map(model, maps[row, 1], width, height)), embedding=embeddings[row])
        if options.class_maps:
            small = {"pred": small_map(model, discriminative[row, 0], width, height)}
            if given_indices[row] is not None:
                small["given"] = small_map(model, discriminative[row, 1], width, height)
            result.class_maps = {name: to_uint8(m) for name, m in small.items()}
            result.on_object = {name: share_inside(m, boxes[0]) for name, m in small.items()} if boxes else {}
            result.given_evidence_box = _relative_box(small.get("given"), EVIDENCE_THRESHOLD)
        results.append(result)
    return results


def map_and_boxes(model: AuditModel, model_map: np.ndarray, width: int, height: int,
                  box_threshold: float, all_boxes: bool = False) -> tuple[np.ndarray, list[list[float]]]:
    """The map back in the image's frame (at most MAP_MAX_SIDE pixels, 0..1) and the relative
    [x, y, w, h] boxes of its largest segment (and, with ``all_boxes``, of the other large ones)."""
    image_map = _in_image_frame(model, model_map, width, height, settings.MAP_MAX_SIDE)
    frame_h, frame_w = image_map.shape
    found = boxes_from_map(image_map, threshold=box_threshold, multiple=all_boxes)
    return image_map, [to_relative(box, frame_w, frame_h) for box in found]


def _relative_box(image_map: np.ndarray | None, threshold: float) -> list[float] | None:
    """The relative [x, y, w, h] box of the map's largest segment at ``threshold``, or None."""
    found = boxes_from_map(image_map, threshold=threshold) if image_map is not None else []
    if not found:
        return None
    height, width = image_map.shape
    return to_relative(found[0], width, height)


def small_map(model: AuditModel, model_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """A map in the image's frame at most SMALL_MAP_SIDE pixels a side (0..1): stored inline."""
    return _in_image_frame(model, model_map, width, height, settings.SMALL_MAP_SIDE)


def _in_image_frame(model: AuditModel, model_map: np.ndarray, width: int, height: int, side: int) -> np.ndarray:
    scale = side / max(width, height)
    frame_w, frame_h = max(1, round(width * scale)), max(1, round(height * scale))
    window = model.preprocess.window(width, height).scaled(frame_w / width, frame_h / height)
    image_map = np.nan_to_num(map_to_image(model_map, window, frame_w, frame_h))  # NaN: non-finite activations
    return image_map / max(float(image_map.max()), 1e-12)  # resizing smooths the peak: back to 0..1


def to_uint8(image_map: np.ndarray) -> np.ndarray:
    """A 0..1 map as stored (0..255), values below MAP_FLOOR of the peak as 0: the App draws nothing
    there, so the photo shows where the map is weak, and the unseen border (always 0) shows no edge."""
    stored = np.clip(image_map * 255.0, 0, 255).astype(np.uint8)
    stored[image_map < MAP_FLOOR] = 0
    return stored


def share_inside(image_map: np.ndarray, box: list[float]) -> float:
    """Share of the map's mass inside the relative [x, y, w, h] box, in [0, 1]."""
    height, width = image_map.shape
    x, y, w, h = box
    inside = image_map[int(y * height):math.ceil((y + h) * height), int(x * width):math.ceil((x + w) * width)]
    return min(1.0, float(inside.sum(dtype=np.float64)) / max(float(image_map.sum(dtype=np.float64)), 1e-12))


# --- second opinions ------------------------------------------------------------------------------


def needs_second_opinion(probabilities: torch.Tensor, given_index: int | None) -> bool:
    """Whether a sample's whole-image decision leaves the label in doubt: the top class is not the
    label, or leads the best other class by less than SECOND_OPINION_MARGIN."""
    if given_index is None:
        return False
    others = probabilities.clone()
    others[given_index] = -1.0
    return bool(normalised_margin(probabilities[given_index], others.max()) < SECOND_OPINION_MARGIN)


def crop_relative(image: Image.Image, box: list[float], pad: float = CROP_PAD) -> Image.Image:
    """The part of ``image`` inside the relative [x, y, w, h] box, grown by ``pad`` of its size on
    each side (context helps the classifier), clipped to the image."""
    width, height = image.size
    x, y, w, h = box
    left, top = max(0.0, (x - pad * w) * width), max(0.0, (y - pad * h) * height)
    right, bottom = min(width, (x + w * (1 + pad)) * width), min(height, (y + h * (1 + pad)) * height)
    return image.crop((int(left), int(top), max(int(left) + 1, math.ceil(right)), max(int(top) + 1, math.ceil(bottom))))


@torch.inference_mode()
def view_probabilities(model: AuditModel, images: torch.Tensor, rows: list[int], pictures: dict,
                       crops: dict[str, dict]) -> dict[int, dict[str, torch.Tensor]]:
    """Second opinions for the samples at ``rows`` of the batch: the class probabilities of the
    mirrored model input (``flip``: is the decision stable?) and of crops of the image, cut from
    ``pictures`` (row -> decoded PIL image) at the relative boxes of ``crops`` (view name -> row ->
    box or None): the Eigen-CAM box (``object``: what is the dominant object?), the largest
    ground-truth box (``gt_box``: what is the annotated object?), the given label's evidence
    region (``given_evidence``: is the labelled object there, only out-shone by another?) and the
    second component's box (``second_object``: which class is a second object?). Run in
    chunks of the batch's size, so memory stays that of a batch."""
    inputs, owners = [], []
    for row in rows:
        inputs.append(torch.flip(images[row], dims=[2]))
        owners.append((row, "flip"))
        for name, boxes in crops.items():
            box = boxes.get(row)
            if box is not None and pictures.get(row) is not None:
                inputs.append(model.preprocess(crop_relative(pictures[row], box)))
                owners.append((row, name))
    views: dict[int, dict[str, torch.Tensor]] = {row: {} for row in rows}
    chunk = max(1, images.shape[0])
    for start in range(0, len(inputs), chunk):
        stack = torch.stack(inputs[start:start + chunk]).to(model.device)
        if stack.device.type in ("cpu", "cuda"):
            stack = stack.contiguous(memory_format=torch.channels_last)
        logits, _ = model.forward(stack)
        for (row, name), probs in zip(owners[start:start + chunk], torch.softmax(logits.float(), dim=1).cpu()):
            views[row][name] = probs
    return views


def _largest(boxes: list[list[float]] | None) -> list[float] | None:
    return max(boxes, key=lambda b: b[2] * b[3]) if boxes else None


# --- an ensemble over one batch --------------------------------------------------------------------


def batch_evidence(models: list[AuditModel], batch: Batch, given_indices: list[int | None],
                   options: EvidenceOptions) -> list[SampleEvidence | None]:
    """Per sample, its `SampleEvidence` (None where the image could not be read): one
    `explain_batch` result per model, and per model the second opinions (none for samples not in doubt).

    Every model sees the same decoded images with its own preprocessing (``batch["images"]``, one
    tensor per model). Whether a sample needs a second opinion is decided on the ensemble's mean
    probabilities; crops are cut from the image decoded again here, for those samples only."""
    per_model = [explain_batch(model, images, batch, options, given_indices)
                 for model, images in zip(models, batch["images"])]
    samples = [None if results[0] is None else SampleEvidence(list(results), [{} for _ in models])
               for results in zip(*per_model)]
    if not options.second_opinion:
        return samples
    rows = [row for row, sample in enumerate(samples) if sample is not None and needs_second_opinion(
        torch.stack([r.probabilities for r in sample.results]).mean(0), given_indices[row])]
    if not rows:
        return samples
    min_side = max(model.preprocess.resize_short for model in models)
    pictures = {row: _decode_again(batch["filepath"][row], min_side) for row in rows}
    gt_boxes = {row: _largest(batch["gt_boxes"][row]) for row in rows} if batch.get("gt_boxes") else {}
    for index, (model, images) in enumerate(zip(models, batch["images"])):
        results = {row: samples[row].results[index] for row in rows}
        for result in results.values():
            result.second_object_box = _relative_box(result.pc2 / 255.0, options.box_threshold)
        crops = {"object": {row: (result.boxes or [None])[0] for row, result in results.items()},
                 "gt_box": gt_boxes,
                 "given_evidence": {row: result.given_evidence_box for row, result in results.items()},
                 "second_object": {row: result.second_object_box for row, result in results.items()}}
        for row, views in view_probabilities(model, images, rows, pictures, crops).items():
            samples[row].views[index] = views
    return samples


def _decode_again(filepath: str, min_side: int) -> Image.Image | None:
    try:
        return open_rgb(filepath, min_side)
    except Exception:  # changed since the loader read it: the crops are left out, the flip stays
        return None


# --- signals and fields ------------------------------------------------------------------------------


def distribution_signals(probabilities: torch.Tensor, given_index: int | None, classes) -> Distribution:
    """Top class and probability of a distribution, its ``top`` DISTRIBUTION_TOP_K [class, probability]
    pairs, and the given class's probability, rank and the best other class's probability (what the
    normalised margin needs)."""
    top_prob, top_index = probabilities.max(0)
    probs, indices = probabilities.topk(min(DISTRIBUTION_TOP_K, len(probabilities)))
    distribution = Distribution(top_label=classes[int(top_index)], top_index=int(top_index), top_prob=float(top_prob),
                                top=[[classes[i], float(p)] for i, p in zip(indices.tolist(), probs)])
    if given_index is None:
        return distribution
    others = probabilities.clone()
    others[given_index] = -1.0
    return replace(distribution, given_prob=float(probabilities[given_index]), max_other_prob=float(others.max()),
                   given_rank=int((probabilities > probabilities[given_index]).sum()) + 1)


def whole_image_signals(whole: Distribution, given_label: str | None, given_index: int | None, classes) -> Signals:
    """The whole image's part of the signals: the head's prediction, its top classes (``top_labels``/
    ``top_probs``: TOP_K; ``top``: DISTRIBUTION_TOP_K pairs) and the given label's standing
    (``given_class``: its name among the head's classes)."""
    return Signals(pred_index=whole.top_index, pred_label=whole.top_label, pred_prob=whole.top_prob,
                   top_labels=[label for label, _ in whole.top[:TOP_K]], top_probs=[p for _, p in whole.top[:TOP_K]],
                   top=whole.top[:DISTRIBUTION_TOP_K], given_label=given_label, given_index=given_index,
                   given_class=None if given_index is None else classes[given_index], given_prob=whole.given_prob,
                   max_other_prob=whole.max_other_prob, given_rank=whole.given_rank)


def agreement_signals(results: list[ModelEvidence], ensemble_top: int) -> dict:
    """How far an ensemble's members agree: ``models_agree``, the share whose top-1 is the
    ensemble's (1 = all); ``box_iou``, the mean IoU of their Eigen-CAM boxes over pairs of models
    (1 = they single out the same object, 0 = different objects or a model without a box)."""
    boxes = [(r.boxes or [None])[0] for r in results]
    pairs = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]]
    ious = [0.0 if a is None or b is None else float(box_iou(to_corners(a), [to_corners(b)])[0]) for a, b in pairs]
    agree = [int(r.probabilities.argmax()) == ensemble_top for r in results]
    return {"models_agree": sum(agree) / len(agree), "box_iou": sum(ious) / len(ious) if ious else 1.0}


def in_set_signals(probabilities: torch.Tensor, label_set_indices: list[int], given_index: int,
                   classes: list[str]) -> Distribution:
    """The whole image's standing among the dataset's classes only (the model's probabilities
    renormalised over them): the label's probability, the best other's, and which that is."""
    in_set = probabilities[label_set_indices]
    in_set = in_set / in_set.sum().clamp_min(1e-12)
    given = label_set_indices.index(given_index)
    others = in_set.clone()
    others[given] = -1.0
    best = int(others.argmax())
    return Distribution(given_prob=float(in_set[given]), max_other_prob=float(others[best]),
                        top_other=classes[label_set_indices[best]])


def sample_signals(models: list[AuditModel], sample: SampleEvidence, given_label: str | None,
                   given_index: int | None, label_set_indices: list[int] | None = None) -> dict:
    """What the scoring reads (``audit_signals``, as stored; see `audit.signals.Signals`): the
    prediction (the ensemble's mean probability when several models) and the given label's standing
    (`whole_image_signals`); the first model's Eigen-CAM figures and class-map shares; per
    second-opinion view the same in short (``views``, averaged over the models), from which the
    scoring forms its consensus; with several models, each model's own standing (``models``) and their
    agreement. With ``label_set_indices`` (the model's indices of the dataset's classes, when it uses
    some of them only), ``outside_prob``: the probability the whole image puts on classes outside the
    dataset's (high = none of them fits), and ``in_set``: the label's standing among the dataset's
    classes alone (`in_set_signals`)."""
    classes = models[0].classes
    results, first = sample.results, sample.results[0]
    probabilities = torch.stack([r.probabilities for r in results]).mean(0)
    whole = distribution_signals(probabilities, given_index, classes)
    views = {name: torch.stack([v[name] for v in sample.views if name in v]).mean(0)
             for name in VIEWS if any(name in v for v in sample.views)}
    own_classes = bool(label_set_indices)
    signals = replace(
        whole_image_signals(whole, given_label, given_index, classes),
        cam_variance_ratio=first.variance_ratio, visible_fraction=first.visible_fraction,
        cam_box_area=first.boxes[0][2] * first.boxes[0][3] if first.boxes else 0.0,
        outside_prob=max(0.0, 1.0 - float(probabilities[label_set_indices].sum())) if own_classes else None,
        in_set=in_set_signals(probabilities, label_set_indices, given_index, classes)
        if own_classes and given_index in label_set_indices and len(label_set_indices) > 1 else None,
        # 1: the second component points where the first does
        second_object_iou=float(box_iou(to_corners(first.second_object_box), [to_corners(first.boxes[0])])[0])
        if first.boxes and first.second_object_box else None,
        class_map_on_object=first.on_object or None,
        views={name: distribution_signals(p, given_index, classes) for name, p in views.items()} or None)
    if len(models) > 1:
        signals = replace(signals, models={field_suffix(m): distribution_signals(r.probabilities, given_index, classes)
                                           for m, r in zip(models, results)},
                          **agreement_signals(results, whole.top_index))
    return signals.stored()


def sample_fields(models: list[AuditModel], sample: SampleEvidence, given_label: str | None, given_index: int | None,
                  map_paths: list[Path], label_set_indices: list[int] | None = None) -> dict:
    """The FiftyOne fields of one scanned sample: ``predictions`` (the ensemble's when several
    models), ``eigencam`` (a PNG at ``map_paths[0]``), ``eigencam_box``, ``eigencam_pc2`` and the
    class maps ``gradcam_pred`` / ``gradcam_given`` (inline, small) of the first model,
    ``audit_signals``; with several models, per other model ``eigencam_<model>`` and
    ``eigencam_box_<model>``, and per model ``predictions_<model>``; per model its pooled embedding
    (``embeddings``, ``embeddings_<model>`` for the others)."""
    signals = sample_signals(models, sample, given_label, given_index, label_set_indices)
    results = sample.results
    whole = distribution_signals(torch.stack([r.probabilities for r in results]).mean(0), None, models[0].classes)
    fields = {
        names.PREDICTIONS: db.fo.Classification(label=whole.top_label, confidence=whole.top_prob),
        names.SIGNALS: signals,
        names.ERROR: None,
        **_map_fields(results[0], map_paths[0], ""),
    }
    first = results[0]
    fields[names.EIGENCAM_PC2] = db.fo.Heatmap(map=first.pc2, range=[0, 255])
    for name, map_field in (("pred", names.GRADCAM_PRED), ("given", names.GRADCAM_GIVEN)):
        small = first.class_maps.get(name)
        fields[map_field] = None if small is None else db.fo.Heatmap(map=small, range=[0, 255])
    for index, result in enumerate(results):
        fields[embeddings_field(models, index)] = result.embedding
    if len(models) > 1:
        for index, (model, result) in enumerate(zip(models, results)):
            suffix = field_suffix(model)
            top = distribution_signals(result.probabilities, None, model.classes)
            fields[f"{names.PREDICTIONS}_{suffix}"] = db.fo.Classification(label=top.top_label, confidence=top.top_prob)
            if index:
                fields.update(_map_fields(result, map_paths[index], f"_{suffix}"))
    return fields


def embeddings_field(models: list[AuditModel], index: int) -> str:
    """Where model ``index`` of the scan's ``models`` stores its embeddings: ``embeddings`` for the first."""
    return names.EMBEDDINGS if index == 0 else f"{names.EMBEDDINGS}_{field_suffix(models[index])}"


def model_field_names(models: list[AuditModel]) -> list[str]:
    """The per-model fields a scan with ``models`` writes: none for one model; for an ensemble,
    ``predictions_<model>`` of each and ``eigencam_<model>`` / ``eigencam_box_<model>`` of all but the first."""
    if len(models) < 2:
        return []
    suffixes = [field_suffix(model) for model in models]
    return [f"{names.PREDICTIONS}_{suffix}" for suffix in suffixes] + \
        [f"{name}_{suffix}" for suffix in suffixes[1:] for name in (names.EIGENCAM, names.EIGENCAM_BOX, names.EMBEDDINGS)]


def _map_fields(result: ModelEvidence, map_path: Path, suffix: str) -> dict:
    detections = [db.fo.Detection(label="eigencam", bounding_box=box) for box in result.boxes]
    return {names.EIGENCAM + suffix: db.fo.Heatmap(map_path=str(map_path), range=[0, 255]),
            names.EIGENCAM_BOX + suffix: db.fo.Detections(detections=detections)}
