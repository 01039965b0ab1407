"""Individualized brain risk maps (reverse occlusion, Lu et al. 2024): every input is the model's
risk template (a whole-brain map the ensemble scores at about 0.5) with one cube replaced by the
subject's own maps; a cube's value is the ensemble's mean AD probability for that input, and each
voxel's value the mean over the cubes covering it. Places where the subject's grey matter alone
raises the probability above the template's score carry risk.

Defaults are the authors': cube 12 voxels (18 mm), step 8 voxels (12 mm), i.e. 12 x 15 x 11 =
1,980 cubes on the model grid (96, 120, 86). Methods: ``incremental`` (exact: the template's
activations are recorded once per fold and each cube recomputes only what it changes),
``approximate`` (coarse lattice computed exactly, the rest interpolated; see ``occlusion``) and
``naive`` (full passes, the reference). Averaging over folds per cube equals averaging the folds'
maps, since the voxel mean is linear.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.progress import CancelCallback, ProgressCallback
from .methods import RISK_METHODS
from .occlusion import CubeRunner, accumulate, as_input, boxes_of_change, check_maps, cube_positions


@dataclass(frozen=True)
class RiskSettings:
    """``cube`` and ``stride`` in voxels of the model grid (authors: 12 and 8, i.e. 18 and 12 mm);
    ``batch_size`` cubes computed together; ``refine``: for the approximate method, the share of
    the cubes between the coarse lattice's that are computed exactly."""

    cube: int = 12
    stride: int = 8
    batch_size: int = 16
    refine: float = 0.1


@dataclass
class RiskMap:
    """``risk``: (96, 120, 86) float32, the mean over the cubes covering each voxel of the
    ensemble's AD probability (0-1) with that cube taken from the subject; ``template_score``: the
    probability of the template itself (the value where the subject equals the template, e.g.
    outside the brain); ``positions`` (P, 3) cube starts and ``values`` (P,) each cube's
    probability; ``computed`` (P,) which values were computed (the others equal the template's
    score, for cubes where subject and template agree, or are interpolated)."""

    risk: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    template_score: float
    method: str
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
    computed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def risk_map(
    models: list,
    x: np.ndarray,
    template: np.ndarray,
    settings: RiskSettings = RiskSettings(),
    method: str = "incremental",
    positions: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> RiskMap:
    """Risk map of one subject for the mean AD probability of ``models`` (fold networks, eval
    mode). ``x`` and ``template``: maps on the model grid (C, 96, 120, 86), both with the bundle's
    input conventions applied (``Ensemble.prepare``). ``positions`` (P, 3) restricts the cubes
    (default: ``cube_positions(cube, stride)``; ``approximate`` needs the default lattice)."""
    check_maps(x, method, positions, RISK_METHODS)
    if template.shape != x.shape:
        raise ValueError(f"the risk template has shape {template.shape}, the subject's maps {x.shape}")
    started = time.perf_counter()
    positions = cube_positions(settings.cube, settings.stride) if positions is None else np.asarray(positions)
    first, size = boxes_of_change((x != template).any(axis=0), positions, settings.cube)
    base, subject = as_input(template, models), as_input(x, models)
    runner = CubeRunner(models, base, subject, list(range(x.shape[0])), positions, first, size, settings.cube, settings.batch_size)
    score, changes, computed, stats = runner.run(method, settings.refine, "risk", progress, should_cancel)
    stats.update(cube_mm=settings.cube * 1.5, stride_mm=settings.stride * 1.5)
    values = score + changes
    risk = accumulate(values, positions, settings.cube, empty=score)
    return RiskMap(risk, positions, values, score, method, time.perf_counter() - started, stats, computed)
