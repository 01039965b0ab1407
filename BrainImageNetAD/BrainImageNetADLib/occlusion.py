"""Occlusion sensitivity maps, as in Lu et al.: an 18 mm cube (12 voxels on the 1.5 mm model
grid) moved in 9 mm steps (6 voxels); the importance of a place is how much the AD probability
drops when that cube of the input is masked.

Maps live on the model grid (96, 120, 86), MNI voxel order; ``to_native`` brings them onto the
patient's T1 grid. Methods behind one interface:

- ``incremental`` (default): exact; cubes without brain (every masked voxel already equal to the
  mask value, so the input does not change) are skipped, the rest are batched and computed by
  incremental inference (``incremental.IncrementalNetwork``);
- ``naive``: mask, full forward pass, for every cube (the reference; slow);
- ``gradient``: gradient x input, a fast preview that is not an occlusion map.

Memory: the recorded unoccluded activations of one network (about 2.3 GB for the paper preset,
0.1 GB for tiny) plus ``batch_size`` patches; it does not grow with the number of cubes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import grid
from .incremental import IncrementalNetwork, Patch
from .progress import CancelCallback, ProgressCallback, check_cancel

METHODS = ("incremental", "naive", "gradient")


@dataclass(frozen=True)
class OcclusionSettings:
    """``cube`` and ``stride`` in voxels of the model grid (paper: 12 and 6, i.e. 18 and 9 mm);
    ``mask_value`` written into the cube (paper: 0) in the ``channels`` given (indices; None:
    all); ``batch_size`` cubes computed together."""

    cube: int = 12
    stride: int = 6
    mask_value: float = 0.0
    channels: tuple[int, ...] | None = None
    batch_size: int = 16


@dataclass
class OcclusionMap:
    """``importance``: (96, 120, 86) float32, the mean drop in AD probability over the cubes
    covering each voxel (0 where no cube changed the input); ``positions`` (P, 3) cube starts and
    ``drops`` (P,) the drop of each cube (probability units); ``probability`` unoccluded."""

    importance: np.ndarray
    positions: np.ndarray
    drops: np.ndarray
    probability: float
    method: str
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def cube_positions(cube: int = 12, stride: int = 6, shape: tuple[int, ...] = grid.MODEL_SHAPE) -> np.ndarray:
    """Cube starts (P, 3): every ``stride`` voxels along each axis, plus one flush with the far
    edge where the steps stop short of it, so that every voxel is covered."""
    axes = []
    for n in shape:
        starts = list(range(0, n - cube + 1, stride))
        if starts[-1] + cube < n:
            starts.append(n - cube)
        axes.append(starts)
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _masked_channels(x: np.ndarray, settings: OcclusionSettings) -> list[int]:
    return list(range(x.shape[0])) if settings.channels is None else list(settings.channels)


def changing_cubes(x: np.ndarray, positions: np.ndarray, settings: OcclusionSettings) -> np.ndarray:
    """Which cubes of ``positions`` (P, 3) change the maps ``x`` (C, 96, 120, 86) at all when
    masked (boolean (P,)); the others leave the output unchanged and are skipped."""
    c, k = _masked_channels(x, settings), settings.cube
    differs = (x[c] != settings.mask_value).any(axis=0)
    return np.array([differs[i : i + k, j : j + k, m : m + k].any() for i, j, m in positions])


def _occluded_patch(x: torch.Tensor, starts: np.ndarray, settings: OcclusionSettings) -> Patch:
    k = settings.cube
    data = torch.stack([x[0, :, i : i + k, j : j + k, m : m + k] for i, j, m in starts]).clone()
    data[:, _masked_channels(x[0], settings)] = settings.mask_value
    return Patch(data, torch.from_numpy(starts.astype(np.int64)))


def accumulate(drops: np.ndarray, positions: np.ndarray, cube: int) -> np.ndarray:
    """Per-cube values ``drops`` (P,) at cube starts ``positions`` (P, 3) averaged, voxel by
    voxel, over the cubes covering it: (96, 120, 86) float32, 0 where no cube lies."""
    total = np.zeros(grid.MODEL_SHAPE, np.float64)
    count = np.zeros(grid.MODEL_SHAPE, np.float64)
    for (i, j, m), d in zip(positions, drops, strict=True):
        total[i : i + cube, j : j + cube, m : m + cube] += d
        count[i : i + cube, j : j + cube, m : m + cube] += 1
    return (total / np.maximum(count, 1)).astype(np.float32)


def occlusion_map(
    models: list[torch.nn.Module],
    x: np.ndarray,
    settings: OcclusionSettings = OcclusionSettings(),
    method: str = "incremental",
    positions: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> OcclusionMap:
    """Occlusion map of one subject for the mean AD probability of ``models`` (fold models, eval
    mode, CPU). ``x``: maps on the model grid, shape (C, 96, 120, 86). ``positions`` (P, 3)
    restricts the cubes (default: ``cube_positions``). Returns the map and per-cube drops."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if x.ndim != 4 or tuple(x.shape[1:]) != grid.MODEL_SHAPE:
        raise ValueError(f"expected maps of shape (C, {', '.join(map(str, grid.MODEL_SHAPE))}), got {x.shape}")
    started = time.perf_counter()
    if method == "gradient":
        return _gradient_x_input(models, x, started)
    positions = cube_positions(settings.cube, settings.stride) if positions is None else np.asarray(positions)
    changing = changing_cubes(x, positions, settings)
    todo = positions[changing]
    device = next(models[0].parameters()).device
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
    probabilities = np.zeros((len(models), len(todo)))
    base = np.zeros(len(models))
    macs = naive_macs = 0
    steps = max(1, len(models) * len(todo))
    recording = 0.0
    for f, model in enumerate(models):
        engine = IncrementalNetwork(model)
        clock = time.perf_counter()
        base[f] = float(torch.sigmoid(engine.record(xt))[0])
        recording += time.perf_counter() - clock
        naive_macs += engine.naive_macs() * len(positions)
        for start in range(0, len(todo), settings.batch_size):
            check_cancel(should_cancel, "occlusion map")
            starts = todo[start : start + settings.batch_size]
            patch = _occluded_patch(xt, starts, settings)
            if method == "incremental":
                logits = engine.forward_patches(patch)
            else:
                logits = _naive_forward(model, xt, patch)
            probabilities[f, start : start + len(starts)] = torch.sigmoid(logits).double().cpu().numpy()
            if progress is not None:
                progress(f"occlusion model {f + 1}/{len(models)}", (f * len(todo) + start + len(starts)) / steps)
        macs += engine.macs if method == "incremental" else engine.naive_macs() * len(todo)
        engine.inputs.clear()
        engine.outputs.clear()
    drops = np.zeros(len(positions))
    drops[changing] = base.mean() - probabilities.mean(axis=0)
    stats = {
        "positions": len(positions),
        "computed_positions": int(changing.sum()),
        "unoccluded_pass_seconds": recording,
        "share_of_naive_macs": macs / naive_macs if naive_macs else None,
        "cube_mm": settings.cube * 1.5,
        "stride_mm": settings.stride * 1.5,
        "mask_value": settings.mask_value,
    }
    return OcclusionMap(
        accumulate(drops, positions, settings.cube), positions, drops, float(base.mean()), method, time.perf_counter() - started, stats
    )


def _naive_forward(model: torch.nn.Module, x: torch.Tensor, patch: Patch) -> torch.Tensor:
    batch = x.repeat(patch.data.shape[0], 1, 1, 1, 1)
    k = patch.size
    for b, (i, j, m) in enumerate(patch.start.tolist()):
        batch[b, :, i : i + k[0], j : j + k[1], m : m + k[2]] = patch.data[b]
    with torch.inference_mode():
        return model(batch)


def _gradient_x_input(models: list[torch.nn.Module], x: np.ndarray, started: float) -> OcclusionMap:
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].requires_grad_(True)
    probability = torch.stack([torch.sigmoid(m(xt))[0] for m in models]).mean()
    (gradient,) = torch.autograd.grad(probability, xt)
    importance = (gradient * xt).detach()[0].sum(dim=0).numpy().astype(np.float32)
    return OcclusionMap(
        importance, np.zeros((0, 3), int), np.zeros(0), float(probability.detach()), "gradient", time.perf_counter() - started
    )


def region_summary(importance: np.ndarray, top: int = 10) -> dict[str, Any]:
    """Mean and peak importance per AAL region of a map on the model grid (96, 120, 86):
    ``hippocampal`` for the regions of ``atlas.REGIONS``, ``top_regions`` the ``top`` regions,
    each ``{label, name, mean, peak, voxels, rank}``. Regions are ranked by the size of their
    mean, whatever its sign: masking grey matter can lower the AD probability (positive drop) or
    raise it (negative drop: a masked cube looks like atrophy); both mark a place the model uses."""
    from .atlas import REGIONS, load_atlas, region_names

    labels = grid.crop_to_model_grid(load_atlas())
    names = region_names()
    rows = []
    for value, name in names.items():
        inside = importance[labels == value]
        if inside.size:
            rows.append(
                {
                    "label": value,
                    "name": name,
                    "mean": float(inside.mean()),
                    "peak": float(inside[np.abs(inside).argmax()]),
                    "voxels": int(inside.size),
                }
            )
    ranked = sorted(rows, key=lambda r: -abs(r["mean"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return {
        "hippocampal": [r for r in ranked if r["label"] in REGIONS],
        "top_regions": ranked[:top],
        "regions_ranked": len(ranked),
    }
