"""``audit eval-loc``: weakly-supervised localization, the Eigen-CAM papers' protocol (Table 1).

A box localizes the object when its IoU with any ground-truth box is at least ``iou`` (0.5).
GT-known localization error: the share of images whose box misses; top-1 localization error: the
share whose box misses or whose top-1 class is wrong (errors in %, lower is better). The model runs
once more over the samples with ground-truth boxes to make Eigen-CAM, fused Eigen-CAM (x
Eigen-Salience) and Grad-CAM (predicted class) maps side by side, at a sweep of thresholds.
"""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import Progress

from audit import names
from audit.boxformat import to_corners
from audit.errors import AuditError
from audit.explain import box_iou, boxes_from_map, eigen_cam, eigen_salience, fuse, grad_cam, map_to_image, normalise_maps
from audit.explain.boxes import DEFAULT_THRESHOLD
from audit.images import open_rgb
from audit.models.registry import AuditModel
from audit.store import db

THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40)
METHODS = ("eigencam", "fused", "gradcam")


class LocalizationError(AuditError):
    """The dataset cannot be evaluated; one line."""


def _maps(model: AuditModel, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each method's (B, h, w) map in the model's input frame, 0..1, and the top-1 classes."""
    with torch.inference_mode(), model.capturing([model.salience_layer] if model.salience_layer else []) as forward:
        logits, activations = forward(images)
        cam = normalise_maps(eigen_cam(activations[model.target_layer].float(), k=1)[0])[:, 0]
        maps = {"eigencam": cam}
        if model.salience_layer:
            maps["fused"] = fuse(cam, eigen_salience(activations[model.salience_layer].float()))
        predicted = logits.argmax(1)
    target = activations[model.target_layer].clone()  # outside inference mode: usable by autograd
    maps["gradcam"] = normalise_maps(grad_cam(target, model.head(), predicted))
    return maps, predicted


def evaluate_localization(dataset, model: AuditModel, *, iou: float = 0.5, batch_size: int = 16,
                          progress: Progress | None = None) -> dict:
    """GT-known and top-1 localization error (%) per method and threshold; the headline figures
    use Eigen-CAM at the scan's default threshold."""
    view = dataset.exists(f"{names.GT_BOXES}.detections")
    label = db.label_field(dataset)
    filepaths, truths, boxes = view.values(["filepath", f"{label}.class_index", f"{names.GT_BOXES}.detections.bounding_box"])
    if not filepaths:
        raise LocalizationError(f"dataset '{dataset.name}' has no ground-truth boxes ({names.GT_BOXES}) to evaluate against")
    hits = {(m, t): [] for m in METHODS for t in THRESHOLDS}
    correct: list[bool] = []
    task = progress.add_task("localizing", total=len(filepaths)) if progress else None
    for start in range(0, len(filepaths), batch_size):
        pictures = []
        for path in filepaths[start:start + batch_size]:
            pictures.append(open_rgb(path))
        images = torch.stack([model.preprocess(p) for p in pictures]).to(model.device)
        maps, predicted = _maps(model, images)
        for row, picture in enumerate(pictures):
            width, height = picture.size
            position = start + row
            truth = np.array([to_corners(box, width, height) for box in boxes[position]])
            correct.append(truths[position] is not None and int(predicted[row]) == truths[position])
            window = model.preprocess.window(width, height)
            for method, method_maps in maps.items():
                image_map = map_to_image(method_maps[row].cpu().numpy(), window, width, height)
                for threshold in THRESHOLDS:
                    found = boxes_from_map(image_map, threshold=threshold)
                    hits[(method, threshold)].append(bool(found) and float(box_iou(found[0], truth).max()) >= iou)
        if progress:
            progress.advance(task, len(pictures))
    correct_array = np.array(correct)
    sweep = {}
    for (method, threshold), method_hits in hits.items():
        if not method_hits:
            continue
        located = np.array(method_hits)
        sweep.setdefault(method, {})[f"{threshold:.2f}"] = {
            "gt_known_loc_error": 100.0 * (1 - located.mean()),
            "top1_loc_error": 100.0 * (1 - (located & correct_array).mean())}
    headline = sweep["eigencam"][f"{DEFAULT_THRESHOLD:.2f}"]
    best = {method: min(rows.items(), key=lambda item: item[1]["gt_known_loc_error"]) for method, rows in sweep.items()}
    return {"n": len(filepaths), "iou": iou, "threshold": DEFAULT_THRESHOLD, **headline,
            "top1_accuracy": 100.0 * float(correct_array.mean()),
            "best_threshold": {m: {"threshold": float(t), **figures} for m, (t, figures) in best.items()},
            "sweep": sweep}
