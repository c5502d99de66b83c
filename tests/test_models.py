"""The model registry: the real embedded model, safe weight loading, clear failures."""

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from audit.images import RESAMPLING, open_rgb
from audit.models.registry import load_model
from audit.models.weights import ModelError, read_state_dict

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"


def test_embedded_model_uses_timm_preprocessing_and_finds_the_last_feature_map(embedded_model):
    assert embedded_model.target_layer == "bn2"
    assert embedded_model.preprocess.crop == 224 and embedded_model.preprocess.resize_short == 256
    assert embedded_model.preprocess.mean == (0.5, 0.5, 0.5) and embedded_model.preprocess.interpolation == "bicubic"
    assert embedded_model.weights_sha256 and len(embedded_model.classes) == 1000


def test_embedded_model_classifies_a_real_photo(embedded_model):
    import skimage.data

    image = Image.fromarray(skimage.data.chelsea())  # a tabby cat
    with torch.inference_mode():
        logits, activations = embedded_model.forward(embedded_model.preprocess(image)[None])
    top5 = [embedded_model.classes[i] for i in logits[0].topk(5).indices]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(top5[:2])
    assert activations["bn2"].shape == (1, 1280, 7, 7)


def test_mixed_precision_is_a_switch_of_the_forward_pass_and_agrees(embedded_model):
    """`--amp` (bfloat16 on a CPU, float16 on CUDA) flips ``forward.autocast``: same top class."""
    import skimage.data

    from audit.scan.kernel import model_runtime
    from audit.scan.options import ScanOptions

    image = embedded_model.preprocess(Image.fromarray(skimage.data.chelsea()))[None]
    with torch.inference_mode():
        full, _ = embedded_model.forward(image)
        with model_runtime(embedded_model, ScanOptions(amp=True, workers=0)):
            assert embedded_model.forward.autocast
            mixed, activations = embedded_model.forward(image.contiguous(memory_format=torch.channels_last))
        assert not embedded_model.forward.autocast  # undone on exit
    assert activations["bn2"].dtype == torch.bfloat16 and mixed.argmax() == full.argmax()


def test_head_reproduces_the_logits_from_the_activations(embedded_model):
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        logits, activations = embedded_model.forward(images)
        again = embedded_model.head()(activations["bn2"])
    torch.testing.assert_close(again, logits, atol=1e-4, rtol=1e-4)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(evil, "wb") as handle:
        pickle.dump({"weight": Evil()}, handle)
    with pytest.raises(ModelError, match="refused"):
        read_state_dict(evil)
    assert not marker.exists()


def test_a_checkpoint_of_another_architecture_gets_one_clear_line(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, other)
    with pytest.raises(ModelError, match="does not fit") as caught:
        load_model("efficientnet_lite0", weights=other, device="cpu")
    assert "\n" not in str(caught.value)


def test_torchvision_model_from_a_local_weights_file_carries_its_own_preprocessing(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    model = load_model("resnet18", weights=weights, device="cpu")
    assert model.target_layer == "layer4" and model.salience_layer == "layer3"
    assert model.preprocess.mean == (0.485, 0.456, 0.406) and model.preprocess.interpolation == "bilinear"
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        logits, activations = model.forward(images)
        torch.testing.assert_close(model.head()(activations["layer4"]), logits, atol=1e-4, rtol=1e-4)
        assert set(activations) == {"layer4"}  # the salience layer only when asked for (eval-loc)
        with model.capturing(["layer3"]) as forward:
            assert set(forward(images)[1]) == {"layer4", "layer3"}
    assert not model.network.layer3._forward_hooks  # its hook is gone again


def test_missing_weights_offline_say_which_file_and_how_to_pass_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as caught:
        load_model("resnet50", device="cpu")
    message = str(caught.value)
    assert "resnet50-" in message and "--weights" in message and str(tmp_path) in message


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model"):
        load_model("no_such_net", device="cpu")


@pytest.mark.parametrize("interpolation", sorted(RESAMPLING))
def test_the_decoders_pixels_equal_torchvisions_resize_and_center_crop(interpolation):
    """`Preprocess.pixels` (PIL and NumPy only, what a Ray read task runs without importing torch)
    gives torchvision's resize + center crop to the pixel: real photos, and images smaller than the
    crop (black padding) in both orientations."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from audit.models.preprocess import Preprocess

    photos = [open_rgb(SAMPLE_DATA / name) for name in ("chelsea.jpg", "rocket.jpg", "coffee.jpg")]
    tiny = [Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 60).convert("RGB") for size in ((3, 150), (199, 7))]
    for preprocess in (Preprocess.from_crop_pct(224, 0.875, (0.5,) * 3, (0.5,) * 3, interpolation),
                       Preprocess(260, 240, (0.5,) * 3, (0.5,) * 3, interpolation)):
        for image in photos + tiny:
            resized = F.resize(image, preprocess.resize_short, interpolation=InterpolationMode(interpolation))
            expected = F.to_image(F.center_crop(resized, preprocess.crop)).as_subclass(torch.Tensor)
            assert torch.equal(preprocess.pixels(image), expected), (image.size, preprocess)
