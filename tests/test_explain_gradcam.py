"""Grad-CAM through a head: CAM for a pooling + linear head, several classes in one pass, inference mode."""

import pytest
import torch
from torch import nn

from audit.explain import class_maps, grad_cam, grad_cam_pp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pool_linear_head(channels: int = 16, classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)).eval()


def activations(batch: int = 3, channels: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, channels, 6, 7, generator=torch.Generator().manual_seed(seed))


def cam(acts: torch.Tensor, head: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    """Class activation map (Zhou et al.) of a pooling + linear head: sum_c w_{cls,c} A_c."""
    return torch.einsum("bc,bchw->bhw", head[2].weight[cls], acts)


def test_grad_cam_of_pool_linear_head_is_cam():
    acts, head = activations(), pool_linear_head()
    cls = torch.tensor([0, 3, 4])
    expected = cam(acts, head, cls).clamp_min(0) / (6 * 7)
    torch.testing.assert_close(grad_cam(acts, head, cls), expected.detach(), rtol=1e-5, atol=1e-7)


def test_class_maps_does_every_class_in_one_pass_and_they_differ():
    acts, head = activations(), pool_linear_head()
    indices = torch.tensor([[0, 1], [2, 2], [4, 0]])
    maps = class_maps(acts, head, indices)
    assert maps.shape == (3, 2, 6, 7) and maps.dtype == torch.float32
    for j in range(2):
        torch.testing.assert_close(maps[:, j], grad_cam(acts, head, indices[:, j]))
    assert not torch.allclose(maps[0, 0], maps[0, 1])
    torch.testing.assert_close(maps[1, 0], maps[1, 1])


def test_grad_cam_pp_of_pool_linear_head():
    acts, head = activations(), pool_linear_head()
    cls = torch.tensor([1, 2, 3])
    got = grad_cam_pp(acts, head, cls)
    # constant gradient g = w / HW per channel: alpha = g^2 / (2 g^2 + sum(A) g^3), weight = HW relu(g) alpha
    g = (head[2].weight[cls] / 42).detach()
    alpha = g**2 / (2 * g**2 + acts.sum(dim=(2, 3)) * g**3 + 1e-7)
    weights = 42 * g.clamp_min(0) * torch.where(g != 0, alpha, 0.0)
    torch.testing.assert_close(got, torch.einsum("bc,bchw->bhw", weights, acts).clamp_min(0), rtol=1e-4, atol=1e-6)
    assert (got >= 0).all()


def test_works_under_inference_mode_and_leaves_the_head_alone():
    head = pool_linear_head()
    with torch.inference_mode():
        acts = activations()  # an inference tensor, as a scan would make it
        maps = class_maps(acts, head, torch.tensor([[0, 1], [1, 2], [2, 3]]))
    assert maps.shape == (3, 2, 6, 7)
    assert all(p.grad is None for p in head.parameters())
    assert not acts.requires_grad


def test_nonlinear_head_matches_autograd_directly():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    acts = activations(2)
    cls = torch.tensor([1, 3])
    x = acts.clone().requires_grad_(True)
    head(x).gather(1, cls[:, None]).sum().backward()
    expected = torch.einsum("bc,bchw->bhw", x.grad.mean(dim=(2, 3)), acts).clamp_min(0)
    torch.testing.assert_close(grad_cam(acts, head, cls), expected, rtol=1e-5, atol=1e-7)


def test_bad_arguments():
    acts, head = activations(), pool_linear_head()
    with pytest.raises(ValueError):
        class_maps(acts, head, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        class_maps(acts, head, torch.tensor([[0], [1], [2]]), method="cam")
