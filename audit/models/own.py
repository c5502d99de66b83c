"""A user's own classifier: its head's size read from the weights file (never the architecture's
default), the head's class names (``--classes FILE``), and the preprocessing it was trained with
(``--model-config FILE``, or ``config.json`` beside the weights: timm's Hugging Face layout)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from audit.errors import InputError
from audit.models.weights import ModelError

# The preprocessing keys of timm's pretrained_cfg a config may set.
PREPROCESSING_KEYS = ("input_size", "crop_pct", "mean", "std", "interpolation")


@dataclass(frozen=True)
class ModelConfig:
    """What a config file says of the model: class names and preprocessing (timm's pretrained_cfg keys)."""

    path: str
    label_names: tuple[str, ...] | None
    preprocessing: dict


def read_class_names(path: Path) -> tuple[str, ...]:
    """The head's class names, one a line in the head's order (blank lines and surrounding spaces dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"classes file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path} names no class: one class name a line, in the head's order")
    repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if repeated is not None:
        raise InputError(f"{path}: class '{repeated}' is named twice")
    return tuple(names)


def read_model_config(path: Path) -> ModelConfig:
    """A JSON config: timm's ``config.json`` (``label_names``, ``pretrained_cfg`` with ``input_size``,
    ``crop_pct``, ``mean``, ``std``, ``interpolation``), or those keys at its top level."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"model config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path} is not a JSON object with timm's pretrained_cfg keys")
    cfg = document.get("pretrained_cfg", document)
    preprocessing = {key: cfg[key] for key in PREPROCESSING_KEYS if key in cfg}
    size = preprocessing.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) for s in size)):
        raise InputError(f"{path}: input_size is [channels, height, width], e.g. [3, 32, 32]; got {size!r}")
    labels = document.get("label_names")
    return ModelConfig(str(path), tuple(labels) if labels else None, preprocessing)


def find_config(weights: Path | None, config: Path | None) -> ModelConfig | None:
    """``config`` when given, else ``config.json`` beside the weights file (timm's layout), else None."""
    if config is not None:
        return read_model_config(config)
    beside = Path(weights).with_name("config.json") if weights is not None else None
    return read_model_config(beside) if beside is not None and beside.is_file() else None


def classifier_name(network: nn.Module) -> str | None:
    """The name of the network's final linear layer (its head), or None."""
    linear = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    return linear[-1] if linear else None


def fit_head(network: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Resize the network's head to the number of classes the state dict's head has; returns it."""
    name = classifier_name(network)
    weight = state.get(f"{name}.weight") if name else None
    if weight is None:
        return network.get_submodule(name).out_features if name else 0
    head = network.get_submodule(name)
    classes = weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != head.in_features:
        raise ModelError(f"{source}: its head '{name}' takes {tuple(weight.shape)[1:]} features, the architecture's "
                         f"{head.in_features}; is it a checkpoint of another architecture?")
    if classes != head.out_features:
        if hasattr(network, "reset_classifier"):  # timm: rebuilds the head (and its pooling) its own way
            network.reset_classifier(classes)
        else:
            parent, _, leaf = name.rpartition(".")
            setattr(network.get_submodule(parent) if parent else network, leaf,
                    nn.Linear(head.in_features, classes, bias=head.bias is not None))
    return classes


def head_classes(size: int, classes_file: Path | None, config: ModelConfig | None, weights: str,
                 default: tuple[str, ...] | None) -> tuple[str, ...]:
    """The head's class names: ``--classes`` first, then the config's ``label_names``, then ``default``
    (the architecture's own, when the head kept its size). A list that is not the head's size is refused."""
    names, origin = None, None
    if classes_file is not None:
        names, origin = read_class_names(classes_file), str(classes_file)
    elif config is not None and config.label_names:
        names, origin = config.label_names, config.path
    if names is None:
        if default is not None and len(default) == size:
            return default
        raise InputError(f"{weights} has a {size}-class head: name its classes with --classes FILE "
                         "(one a line, in the head's order)")
    if len(names) != size:
        raise InputError(f"{origin} names {len(names)} classes, but the head of {weights} has {size} outputs")
    return names
