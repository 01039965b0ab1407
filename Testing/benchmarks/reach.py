"""Where the AD network looks: which input voxels can change its output at all, and how strongly
it responds to each region, per preset (``brainimagenet-bench reach``).

The geometry is the architecture's (the authors' at every width): the valid convolutions and
poolings of stride 2 above the stem leave the last lattice positions of some axes out, so a band
at the edge of the 96x120x86 model grid never reaches the output. ``reach`` is measured exactly
as the voxels where the gradient of the output with respect to the input is non-zero for some
random input; ``sensitivity`` is the mean absolute gradient over a region's grey matter divided
by that over all grey matter (GM prior > 0.3), for random weights (``signal_preserving_init``)
and for the shipped demonstration ensemble's trained fold networks at its risk template."""

from __future__ import annotations

import numpy as np
import torch

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.explain.atlas import region_mask

#: Region groups reported (AAL names without the side suffix, both sides unless a side is named).
GROUPS = {
    "hippocampus, left": ("Hippocampus_L",),
    "hippocampus, right": ("Hippocampus_R",),
    "parahippocampal": ("ParaHippocampal",),
    "lateral parietal + precuneus": ("Parietal_Sup", "Parietal_Inf", "SupraMarginal", "Angular", "Precuneus"),
    "dorsolateral prefrontal": ("Frontal_Mid", "Frontal_Inf_Oper", "Frontal_Inf_Tri"),
    "middle temporal, left": ("Temporal_Mid_L",),
    "middle temporal, right": ("Temporal_Mid_R",),
    "superior frontal": ("Frontal_Sup", "Frontal_Sup_Medial"),
    "occipital": ("Occipital_Sup", "Occipital_Mid", "Occipital_Inf", "Calcarine", "Cuneus", "Lingual"),
}


def _gradient_magnitude(model: torch.nn.Module, inputs: list[np.ndarray]) -> np.ndarray:
    """Sum over ``inputs`` (each (C, 96, 120, 86)) and channels of |d output / d input|: (96, 120, 86)."""
    total = np.zeros(grid.MODEL_SHAPE)
    for x in inputs:
        tensor = torch.tensor(x[None], dtype=torch.float32, requires_grad=True)
        model(tensor).sum().backward()
        total += tensor.grad[0].abs().sum(0).numpy()
    return total


def _group_masks(grey: np.ndarray) -> dict[str, np.ndarray]:
    """Grey-matter voxels (model grid) of all GM and of each of ``GROUPS``."""
    return {"all grey matter": grey} | {group: grid.crop_to_model_grid(region_mask(parts)) & grey for group, parts in GROUPS.items()}


def bench_reach(presets: list[str], seed: int = 0) -> tuple[list[dict[str, float | str]], list[str]]:
    """Per region group (rows): its grey-matter voxels, the share of them the output cannot see
    (the same for every preset), and the relative sensitivity per preset (random weights) and of
    the shipped demonstration ensemble (trained; summed over its folds, at its risk template).
    Returns the rows and summary lines (the model-grid index ranges that reach the output)."""
    from BrainImageNetADLib.core.resources import default_bundle
    from BrainImageNetADLib.model.bundle import load_fold_models, load_risk_template
    from BrainImageNetADLib.model.networks import build_network

    from .speed import signal_preserving_init

    grey = grid.crop_to_model_grid(templates.mni_templates_on_grid()["GM"]) > 0.3
    masks = _group_masks(grey)
    rng = np.random.default_rng(seed)
    noise = [rng.random((2, *grid.MODEL_SHAPE), dtype=np.float32) for _ in range(2)]
    magnitudes: dict[str, np.ndarray] = {}
    for preset in presets:
        torch.manual_seed(seed)
        magnitudes[preset] = _gradient_magnitude(signal_preserving_init(build_network("ad_transfer", preset, 2), seed), noise)
    reached = np.logical_and.reduce([m > 0 for m in magnitudes.values()])
    card, models = load_fold_models(default_bundle())
    template = load_risk_template(default_bundle(), card)
    magnitudes[f"{card.name}, trained"] = sum(_gradient_magnitude(m.eval(), [template]) for m in models)
    rows = []
    for group, mask in masks.items():
        row: dict[str, float | str] = {"region": group, "gm_voxels": int(mask.sum()), "unreachable_share": float(1 - reached[mask].mean())}
        for name, magnitude in magnitudes.items():
            row[f"sensitivity {name}"] = float(magnitude[mask].mean() / magnitude[grey].mean())
        rows.append(row)
    span = [np.flatnonzero(reached.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    ranges = ", ".join(f"{axis} {s.min()}-{s.max()} of {n}" for axis, s, n in zip("xyz", span, grid.MODEL_SHAPE, strict=True))
    return rows, [f"model-grid voxels that reach the output: {ranges}; {100 * (1 - reached[grey].mean()):.1f} % of grey matter never does"]
