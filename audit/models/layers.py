"""Target-layer discovery and a one-pass forward that yields logits and the layer's activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from audit.models.weights import ModelError


def trace_spatial_layers(model: nn.Module, input_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Named modules whose output is a 4-D feature map with more than one position, in the order
    their forward passes finish (a container finishes after its children)."""
    finished: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                finished.append((name, tuple(output.shape[1:])))

        handles.append(module.register_forward_hook(record))
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return finished


def find_target_layer(model: nn.Module, input_size: int) -> str:
    """The last spatial feature map before global pooling: the last module to finish with a
    4-D output of more than one position."""
    layers = trace_spatial_layers(model, input_size)
    if not layers:
        raise ModelError("the model has no spatial feature map to explain; pass --layer MODULE")
    return layers[-1][0]


def find_salience_layer(model: nn.Module, input_size: int, target: str) -> str | None:
    """A lower conv layer at twice the target's resolution (for Eigen-Salience), or None: the last
    module to finish whose feature map is at least twice as wide as the target's."""
    layers = trace_spatial_layers(model, input_size)
    target_width = dict(layers)[target][-1]
    lower = [name for name, shape in layers if shape[-1] >= 2 * target_width and not target.startswith(name + ".")]
    return lower[-1] if lower else None


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"no module named '{name}' in the model; `--layer` takes a module name as "
                         "`print(model)` shows it (e.g. 'layer4')") from None


class FeatureForward:
    """Runs the model once and keeps the outputs of the named layers, through forward hooks that
    `close` removes. ``autocast`` runs the pass in mixed precision (float16 on CUDA, bfloat16
    elsewhere); the explanation code after it casts activations to float32 itself."""

    def __init__(self, model: nn.Module, layers: list[str]):
        self.model = model
        self.autocast = False
        self._captured: dict[str, torch.Tensor] = {}
        self._hooks = [get_module(model, name).register_forward_hook(self._keeper(name)) for name in layers]

    def _keeper(self, name: str) -> Callable:
        def keep(_module, _inputs, output):
            self._captured[name] = output

        return keep

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(logits, {layer name: activations})."""
        self._captured = {}
        if self.autocast:
            device_type = images.device.type
            with torch.autocast(device_type, dtype=torch.float16 if device_type == "cuda" else torch.bfloat16):
                logits = self.model(images)
        else:
            logits = self.model(images)
        return logits, dict(self._captured)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def build_head(model: nn.Module, target: str, input_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The part of the network after the target layer, as a function activations -> logits.

    timm models expose it (``forward_head``); for others, the direct children after the target
    (with a flatten before the first Linear) are used when they reproduce the model's logits;
    otherwise the whole model is re-run with the target's output substituted (correct, slower).
    """
    device = next(model.parameters()).device
    probe = torch.randn(2, 3, input_size, input_size, device=device)
    captured = {}
    handle = get_module(model, target).register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    with torch.inference_mode():
        expected = model(probe)
    handle.remove()
    activations = captured["a"]

    candidates = []
    if hasattr(model, "forward_head") and target == _timm_feature_layer(model):
        candidates.append(lambda a: model.forward_head(a))
    children = dict(model.named_children())
    if target in children:
        names = list(children)
        rest = [children[n] for n in names[names.index(target) + 1:]]
        candidates.append(lambda a, rest=rest: _run_children(rest, a))
    for head in candidates:
        try:
            with torch.inference_mode():
                if torch.allclose(head(activations), expected, atol=1e-4, rtol=1e-3):
                    return head
        except Exception:  # a head that does not fit this model: try the next
            continue

    def substituted(a: torch.Tensor) -> torch.Tensor:
        hook = get_module(model, target).register_forward_hook(lambda m, i, o: a)
        try:
            return model(torch.zeros(a.shape[0], 3, input_size, input_size, device=a.device))
        finally:
            hook.remove()

    return substituted


def _timm_feature_layer(model: nn.Module) -> str | None:
    """The module whose output timm's forward_features returns, for the families we know."""
    for name in ("bn2", "norm_pre", "final_conv", "head_hidden_size"):
        if hasattr(model, name) and isinstance(getattr(model, name), nn.Module):
            return name
    return None


def _run_children(children: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for child in children:
        if isinstance(child, nn.Linear) and x.dim() > 2:
            x = torch.flatten(x, 1)
        x = child(x)
    return x
