"""The embedded EfficientNet-Lite0/1/2 and ensembles of them: the weights loaded by position
against an independent forward pass that reads them by name; two models with different input sizes
localizing the same object; an ensemble scan storing each model and averaging them; the CLI."""

import math
from pathlib import Path

import cv2
import fiftyone as fo
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLE_DATA
from PIL import Image
from synthetic_images import espresso_cup, make_dataset, noise_canvas, paste
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.explain import box_iou
from audit.models.registry import EMBEDDED, embedded_weights_file, load_model
from audit.scan.evidence import field_suffix
from audit.scan.options import ScanOptions
from audit.scan.run import scan
from audit.store import db

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
BN_EPS = 1e-3  # TensorFlow's batch norm epsilon, kept by the reference implementation
STRIDE_2_STAGES = (2, 3, 4, 6)  # of the seven stages (1-based) after the stem

runner = CliRunner()


@pytest.fixture(scope="module")
def models():
    """The three embedded models, loaded once for this module, on the CPU."""
    return {name: load_model(name, device="cpu") for name in EMBEDDED}


# --- an independent EfficientNet-Lite forward pass, reading the reference implementation's names -------


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's "SAME" padding: total = max((ceil(n / s) - 1) * s + k - n, 0) per side, the
    extra pixel on the right and bottom. It is the padding that reproduces timm's tf_efficientnet_lite
    (and the weights were trained with it). Symmetric k // 2 padding is not: it shifts what each
    stride-2 convolution samples by one pixel, and the logits move by up to 1.5 (Lite0, chelsea.jpg)."""
    height, width = x.shape[-2:]

    def total(size: int) -> int:
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)

    rows, columns = total(height), total(width)
    return F.pad(x, (columns // 2, columns - columns // 2, rows // 2, rows - rows // 2))


def conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    return F.conv2d(pad_same(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)


def batch_norm(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=BN_EPS)


def efficientnet_lite_logits(state: dict, images: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite from its state dict, by key name: stem, MBConv blocks (expansion 1x1,
    depthwise kxk, projection 1x1, ReLU6, no squeeze-excitation), head, average pool, classifier.
    A stage starts where the projection's width changes; the first block of stages 2, 3, 4 and 6
    has stride 2 (widths 24, 40, 80, 192 for Lite0/1; 24, 48, 88, 208 for the wider Lite2)."""
    x = F.relu6(batch_norm(conv(images, state["_conv_stem.weight"], stride=2), state, "_bn0"))
    blocks = sorted({int(key.split(".")[1]) for key in state if key.startswith("_blocks.")})
    stage, width = 0, None
    for index in blocks:
        prefix = f"_blocks.{index}"
        out_channels = state[f"{prefix}._project_conv.weight"].shape[0]
        first_of_stage = out_channels != width
        stage, width = stage + first_of_stage, out_channels
        stride = 2 if first_of_stage and stage in STRIDE_2_STAGES else 1
        block_input = x
        if f"{prefix}._expand_conv.weight" in state:  # the first block has no expansion
            x = F.relu6(batch_norm(conv(x, state[f"{prefix}._expand_conv.weight"]), state, f"{prefix}._bn0"))
        depthwise = state[f"{prefix}._depthwise_conv.weight"]
        x = F.relu6(batch_norm(conv(x, depthwise, stride, groups=depthwise.shape[0]), state, f"{prefix}._bn1"))
        x = batch_norm(conv(x, state[f"{prefix}._project_conv.weight"]), state, f"{prefix}._bn2")
        if stride == 1 and block_input.shape[1] == out_channels:
            x = x + block_input
    x = F.relu6(batch_norm(conv(x, state["_conv_head.weight"]), state, "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), state["_fc.weight"], state["_fc.bias"])


@pytest.mark.parametrize("name", list(EMBEDDED), ids=["lite0", "lite1", "lite2"])
def test_embedded_weights_match_an_independent_forward(models, name, one_torch_thread):
    model = models[name]
    state = torch.load(embedded_weights_file(name), map_location="cpu", weights_only=True)
    photo = model.preprocess(Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB"))[None]
    with torch.inference_mode():
        logits = model.network(photo)
        expected = efficientnet_lite_logits(state, photo)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert model.classes[int(logits.argmax())] in CAT_CLASSES


# --- two models with different input sizes ---------------------------------------------------------


def pixel_box(detection, width: int, height: int) -> tuple[float, float, float, float]:
    x, y, w, h = detection.bounding_box
    return x * width, y * height, (x + w) * width, (y + h) * height


def contains(box, point) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def centre_of_mass(heatmap: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """The map's centre of mass in the image's pixel coordinates."""
    rows, columns = np.mgrid[:heatmap.shape[0], :heatmap.shape[1]]
    mass = heatmap.astype(np.float64)
    return ((columns + 0.5) * mass).sum() / mass.sum() * width / heatmap.shape[1], \
        ((rows + 0.5) * mass).sum() / mass.sum() * height / heatmap.shape[0]


def test_two_models_with_different_input_sizes_find_the_object_in_the_same_place(models, tmp_path, one_torch_thread):
    width, height = 640, 400  # wider than tall: each model sees a centre square (224 and 260 pixels)
    canvas = noise_canvas(width, height)
    cup = paste(canvas, espresso_cup(), 150, 30, 220)  # up and left of the centre, inside the visible square
    cup_centre = ((cup[0] + cup[2]) / 2, (cup[1] + cup[3]) / 2)
    path = tmp_path / "cup.jpg"
    Image.fromarray(canvas).save(path, quality=92)
    lite0, lite2 = models["efficientnet_lite0"], models["efficientnet_lite2"]
    assert lite0.preprocess.crop != lite2.preprocess.crop
    dataset = make_dataset("cup-two-sizes", [(path, "espresso")], tmp_path)
    scan(dataset, [lite0, lite2], options=ScanOptions(workers=0, second_opinion=False))
    sample = dataset.first()
    suffix = field_suffix(lite2)
    boxes = [pixel_box(sample[field].detections[0], width, height)
             for field in (names.EIGENCAM_BOX, f"{names.EIGENCAM_BOX}_{suffix}")]
    for box in boxes:
        assert contains(box, cup_centre), box
        assert box_iou(box, [cup])[0] >= 0.5, box
    assert sample[names.SIGNALS]["box_iou"] == pytest.approx(box_iou(boxes[0], [boxes[1]])[0], abs=1e-6)
    assert sample[names.SIGNALS]["box_iou"] >= 0.6
    for field in (names.EIGENCAM, f"{names.EIGENCAM}_{suffix}"):
        heatmap = cv2.imread(sample[field].map_path, cv2.IMREAD_GRAYSCALE)
        assert heatmap.max() == 255
        assert abs(heatmap.shape[1] / heatmap.shape[0] - width / height) < 0.05
        # The map's mass sits on the cup, which is up and left of the image's centre.
        assert contains(cup, centre_of_mass(heatmap, width, height))


# --- an ensemble scan ------------------------------------------------------------------------------


def test_an_ensemble_scan_stores_each_model_and_averages_them(models, tmp_path, one_torch_thread):
    pair = [models["efficientnet_lite0"], models["efficientnet_lite1"]]
    suffixes = [field_suffix(model) for model in pair]
    assert suffixes == ["efficientnet_lite0", "efficientnet_lite1"]
    photos = {"chelsea.jpg": "tiger cat", "coffee.jpg": "tripod", "camera.jpg": "espresso", "rocket.jpg": "missile"}
    dataset = make_dataset("pair", [(SAMPLE_DATA / name, label) for name, label in photos.items()], tmp_path)
    summary = scan(dataset, pair, options=ScanOptions(workers=0))
    assert summary.scanned == len(photos)
    assert [model["model"] for model in dataset.info["audit"]["scan"]["models"]] == [model.name for model in pair]
    differing = 0
    for sample in dataset:
        signals = sample[names.SIGNALS]
        assert set(signals["models"]) == set(suffixes)
        for suffix in suffixes:
            assert sample[f"{names.PREDICTIONS}_{suffix}"].label == signals["models"][suffix]["top_label"]
        own = [signals["models"][suffix]["given_prob"] for suffix in suffixes]
        assert signals["given_prob"] == pytest.approx(sum(own) / 2, abs=1e-5)
        differing += abs(own[0] - own[1]) > 1e-3
        agreeing = [signals["models"][suffix]["top_label"] == signals["pred_label"] for suffix in suffixes]
        assert signals["models_agree"] in (0.0, 0.5, 1.0)
        assert signals["models_agree"] == sum(agreeing) / 2
        assert sample[names.PREDICTIONS].label == signals["pred_label"]
        second_map = Path(sample[f"{names.EIGENCAM}_{suffixes[1]}"].map_path)
        assert second_map.is_file() and second_map != Path(sample[names.EIGENCAM].map_path)
        assert cv2.imread(str(second_map), cv2.IMREAD_GRAYSCALE).max() == 255
        assert len(sample[f"{names.EIGENCAM_BOX}_{suffixes[1]}"].detections) == 1
    assert differing > 0  # the two models do differ: the mean is not one model's value


def test_the_cli_scans_an_ensemble_and_refuses_wrong_combinations(tmp_path):
    table = tmp_path / "one.csv"
    table.write_text(f"filepath,label\n{SAMPLE_DATA / 'chelsea.jpg'},tiger cat\n")
    result = runner.invoke(app, ["scan", "csv", "--root", str(table), "--name", "cli-pair", "--workers", "0",
                                 "--model", "efficientnet_lite0", "--model", "efficientnet_lite1"])
    assert result.exit_code == 0, result.output
    sample = db.load_dataset("cli-pair").first()
    assert sample["predictions_efficientnet_lite1"].label in CAT_CLASSES
    sample["predictions_mine"] = fo.Classification(label="mine")  # a field of the user's, named like ours
    sample.save()
    alone = runner.invoke(app, ["scan", "fiftyone", "--root", "cli-pair", "--workers", "0"])  # Lite0 alone: redone
    assert alone.exit_code == 0 and "scanned 1," in alone.output, alone.output
    sample.reload()
    for field in ("predictions_efficientnet_lite0", "predictions_efficientnet_lite1",
                  "eigencam_efficientnet_lite1", "eigencam_box_efficientnet_lite1"):
        assert sample[field] is None, field  # no results left of models this scan did not run
    assert "models" not in sample[names.SIGNALS] and sample["predictions_mine"].label == "mine"
    unknown = runner.invoke(app, ["scan", "csv", "--root", str(table), "--models", "nonsense"])
    assert unknown.exit_code == 2 and "--models" in unknown.output
    weights = runner.invoke(app, ["scan", "csv", "--root", str(table), "--model", "efficientnet_lite0",
                                  "--model", "efficientnet_lite1", "--weights", "x.pth"])
    assert weights.exit_code == 2 and "--weights" in weights.output
