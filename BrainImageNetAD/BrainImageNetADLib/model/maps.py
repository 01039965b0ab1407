"""Reading grey-matter maps (GMD, GMV) from files and checking they are what the model expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core import grid
from ..core.errors import InputError
from ..core.imageheader import read_nifti

#: Largest plausible GMV value: native GM volume pushed into one MNI voxel, per MNI voxel volume
#: (GMD <= 1 times the volume scale of the normalisation).
MAX_GMV = 10.0
_PROBABILITY_SLACK = 0.05


def load_nifti(path: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file; return (data as float32 (I, J, K[, T]), voxel-to-RAS affine in mm)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name}: file not found: {path}")
    try:
        data, affine = read_nifti(path)
    except InputError as error:
        raise InputError(f"{name}: {error}") from None
    if data.ndim == 4 and data.shape[3] > 1:
        raise InputError(f"{name}: {path.name} is 4D with {data.shape[3]} volumes; save the one to use as a 3D file")
    return data, affine


def check_map(data: np.ndarray, kind: str, name: str) -> dict[str, Any]:
    """Check a map on the model grid: finite, not empty, values in the range of ``kind``
    (``GMD``: probabilities in [0, 1]; ``GMV``: >= 0 and <= MAX_GMV). Returns a summary."""
    if not np.isfinite(data).all():
        raise InputError(f"{name}: holds {int((~np.isfinite(data)).sum())} NaN or infinite voxels")
    lo, hi = float(data.min()), float(data.max())
    if hi <= 0.0:
        raise InputError(f"{name}: the map is empty (all voxels <= 0)")
    if lo < -_PROBABILITY_SLACK:
        raise InputError(f"{name}: negative values (min {lo:.3g}); a {kind} map is never negative")
    if kind == "GMD" and hi > 1.0 + _PROBABILITY_SLACK:
        raise InputError(f"{name}: values up to {hi:.3g}, but GMD is a grey-matter probability in [0, 1]; is this a T1 image?")
    if kind == "GMV" and hi > MAX_GMV:
        raise InputError(f"{name}: values up to {hi:.3g}, implausible for modulated grey matter (max {MAX_GMV})")
    return {"min": lo, "max": hi, "mean": float(data.mean()), "nonzero_fraction": float((data > 0).mean())}


def load_model_input(paths: dict[str, str | Path], channels: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Load the maps named by ``channels`` (e.g. ``["GMD", "GMV"]``) from ``paths`` and stack them.

    Each file must lie on the MNI 1.5 mm grid (121x145x121, cropped here) or on the model grid.
    Returns (array of shape (C, 96, 120, 86) float32, input checks for ``result.json``).
    """
    arrays: list[np.ndarray] = []
    checks: dict[str, Any] = {}
    for kind in channels:
        if kind not in paths or paths[kind] is None:
            raise InputError(f"the model needs a {kind} map (--{kind.lower()})")
        data, affine = load_nifti(paths[kind], kind)
        model_data = grid.to_model_grid(data, affine, kind)
        summary = check_map(model_data, kind, kind)
        summary["source_shape"] = list(data.shape)
        summary["file"] = Path(paths[kind]).name
        checks[kind] = summary
        arrays.append(model_data)
    return np.stack(arrays), checks
