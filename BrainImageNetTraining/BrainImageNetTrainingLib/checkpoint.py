"""Training checkpoints as single safetensors files (never pickles).

A checkpoint holds the model's tensors (``model.*``), the optimiser's momentum buffers
(``momentum.<i>``, one per trainable parameter in order), torch's CPU random state, and a JSON
string in the file's metadata with the loop state (epoch, iteration, best validation loss,
history). One file, written to a temporary name and renamed: a killed run leaves either the old
or the new checkpoint, never a mix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from BrainImageNetADLib.core.errors import BundleError


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write model, SGD momentum buffers, RNG state and ``state`` (JSON-serialisable) atomically."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{index}"] = buffer.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(state, sort_keys=True)})
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore a checkpoint written by ``save_checkpoint`` into ``model`` and ``optimizer`` (built
    the same way); return its loop state."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise BundleError(f"{path}: damaged checkpoint ({exc}); delete it to restart this fold") from None
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        buffer = tensors.get(f"momentum.{index}")
        if buffer is not None:
            optimizer.state[param]["momentum_buffer"] = buffer.to(param.device)
    torch.set_rng_state(tensors["rng.torch"])
    return json.loads(metadata["state"])
