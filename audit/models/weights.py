"""Safe loading of weight files: plain state dicts only (safetensors or torch's weights_only)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn

from audit.errors import AuditError


class ModelError(AuditError):
    """A model could not be built or loaded; the message is one line that says what to do."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, never unpickling code. Accepts a bare state dict or a checkpoint
    holding one under ``state_dict``, ``model`` or ``model_state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelError(f"refused to load {path}: it is not a plain state dict and unpickling it "
                         f"could run code ({str(error).splitlines()[0][:120]})") from None
    except Exception as error:  # a corrupt or foreign file
        raise ModelError(f"cannot read weights from {path}: {str(error).splitlines()[0][:160]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str,
              by_position: bool = False) -> None:
    """Load ``state`` into ``model`` strictly, by name (or by position when the files were written
    by another implementation with the same tensors in the same order)."""
    target = model.state_dict()
    if by_position:
        if len(state) != len(target) or any(a.shape != b.shape for a, b in zip(state.values(), target.values())):
            raise ModelError(f"{source} does not fit {model_name}: {len(state)} tensors for {len(target)}; "
                             "is it a checkpoint of another architecture?")
        state = dict(zip(target.keys(), state.values()))
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or wrong_shape:
        example = (wrong_shape or missing or unexpected)[0]
        raise ModelError(f"{source} does not fit {model_name}: {len(missing)} missing, "
                         f"{len(unexpected)} unexpected, {len(wrong_shape)} wrongly shaped tensors "
                         f"(e.g. {example}); is it a checkpoint of another architecture?")
    model.load_state_dict(state)
