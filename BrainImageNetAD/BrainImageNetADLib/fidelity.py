"""Agreement of our grey-matter maps with SPM12's, the maps the paper's networks were trained on.

A reference folder holds one sub-folder per scan with ``source.txt`` (the input scan, relative to
the folder two levels up, or absolute), ``wc1*.nii.gz`` (GM warped to MNI, unmodulated: the
paper's GMD), ``mwc1*.nii.gz`` (modulated: GMV) and ``c1*.nii.gz`` (GM in the scan's own space),
all made by SPM12's Segment with its defaults. Measures per scan:

- GMD vs ``wc1`` and GMV vs ``mwc1``: Pearson r over the voxels where either map exceeds 0.05,
  unsmoothed and after smoothing both with a 4 mm FWHM Gaussian;
- total grey matter: sum of GMV x 3.375 mm^3 (native mL), as a ratio to SPM's;
- native GM vs ``c1``: Dice of both thresholded at 0.5, compared in physical space (our GM on the
  grid it was segmented on, ``gm_native.nii.gz``, resampled onto ``c1``'s grid).

The correlation of GMD with the MNI152 GM prior (QC) is not fidelity: a map that follows the
prior scores well on it and still differs from what SPM gives.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from . import grid
from .errors import InputError
from .maps import load_nifti

#: Smoothing applied to both maps for the smoothed correlations (FWHM, mm).
SMOOTHING_MM = 4.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class ReferenceScan:
    """One scan of a reference folder: its name, input scan and SPM12's maps."""

    name: str
    source: Path
    wc1: Path
    mwc1: Path
    c1: Path


def reference_scans(reference_dir: str | Path) -> list[ReferenceScan]:
    """The scans of an SPM12 reference folder (see the module docstring), sorted by name."""
    root = Path(reference_dir)
    if not root.is_dir():
        raise InputError(f"{root}: reference folder not found")
    scans = []
    for folder in sorted(p for p in root.iterdir() if (p / "source.txt").is_file()):
        text = (folder / "source.txt").read_text().strip().splitlines()[0]
        source = Path(text) if Path(text).is_absolute() else root.parent.parent / text
        found = {prefix: sorted(folder.glob(f"{prefix}*.nii*")) for prefix in ("wc1", "mwc1", "c1")}
        if any(len(v) != 1 for v in found.values()):
            raise InputError(f"{folder}: expected one wc1*, one mwc1* and one c1* map")
        scans.append(ReferenceScan(folder.name, source, found["wc1"][0], found["mwc1"][0], found["c1"][0]))
    if not scans:
        raise InputError(f"{root}: no scan folders with a source.txt")
    return scans


def _smooth(data: np.ndarray, fwhm_mm: float, voxel_mm: float = 1.5) -> np.ndarray:
    return ndimage.gaussian_filter(data.astype(np.float64), fwhm_mm * _FWHM_TO_SIGMA / voxel_mm)


def _correlation(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def map_agreement(gmd: np.ndarray, gmv: np.ndarray, wc1: np.ndarray, mwc1: np.ndarray) -> dict[str, float]:
    """Agreement of our GMD/GMV with SPM's wc1/mwc1, all (121, 145, 121) on the MNI 1.5 mm grid in
    the same voxel order: r unsmoothed and at 4 mm (inside voxels where either map > 0.05) and
    the total-GM ratio (ours / SPM's)."""
    out: dict[str, float] = {}
    for name, ours, theirs in (("gmd", gmd, wc1), ("gmv", gmv, mwc1)):
        inside = (ours > 0.05) | (theirs > 0.05)
        out[f"{name}_r"] = _correlation(ours, theirs, inside)
        out[f"{name}_r_4mm"] = _correlation(_smooth(ours, SMOOTHING_MM), _smooth(theirs, SMOOTHING_MM), inside)
    out["gm_ml"] = float(gmv.sum() * grid.MNI_VOXEL_MM3 / 1000)
    out["spm_gm_ml"] = float(mwc1.sum() * grid.MNI_VOXEL_MM3 / 1000)
    out["gm_volume_ratio"] = out["gm_ml"] / out["spm_gm_ml"]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays of the same shape."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def native_dice(preprocessing_dir: str | Path, c1_path: str | Path) -> float:
    """Dice of our GM in the scan's space (``gm_native.nii.gz``) and SPM's ``c1``, both
    thresholded at 0.5, ours resampled onto ``c1``'s grid (physical space, linear)."""
    import ants

    ours = ants.image_read(str(Path(preprocessing_dir) / "gm_native.nii.gz"))
    theirs = ants.image_read(str(c1_path))
    on_theirs = ants.resample_image_to_target(ours, theirs, interp_type="linear").numpy()
    return dice(on_theirs > 0.5, theirs.numpy() > 0.5)


def _on_mni_grid(path: Path, name: str) -> np.ndarray:
    data, affine = load_nifti(path, name)
    data = data[..., 0] if data.ndim == 4 else data
    if data.shape != grid.MNI_SHAPE or not np.allclose(affine, grid.MNI_AFFINE, atol=0.05):
        raise InputError(f"{path.name}: not on SPM's 121x145x121 1.5 mm MNI grid")
    return np.nan_to_num(data)


def scan_fidelity(scan: ReferenceScan, preset: str = "fast") -> dict[str, Any]:
    """Preprocess a reference scan (in a child process, into a temporary folder) and measure its
    agreement with SPM12's maps."""
    from .preprocess import preprocess_t1
    from .worker import run_isolated

    with tempfile.TemporaryDirectory(prefix="brainimagenet-fidelity-") as scratch:
        out = Path(scratch)
        report = run_isolated(preprocess_t1, scan.source, out, preset)
        measures = preprocessed_agreement(scan, out)
    return {"scan": scan.name, **measures, "qc": report["verdict"], "seconds": float(report["seconds"]["total"])}


def preprocessed_agreement(scan: ReferenceScan, preprocessing_dir: str | Path) -> dict[str, float]:
    """``map_agreement`` and ``native_dice`` of a finished preprocessing folder of ``scan``."""
    out = Path(preprocessing_dir)
    gmd = _on_mni_grid(out / "gmd.nii.gz", "GMD")
    gmv = _on_mni_grid(out / "gmv.nii.gz", "GMV")
    measures = map_agreement(gmd, gmv, _on_mni_grid(scan.wc1, "wc1"), _on_mni_grid(scan.mwc1, "mwc1"))
    return {**measures, "dice_native": native_dice(out, scan.c1)}


def summary_line(rows: list[dict[str, Any]]) -> str:
    """The benchmark's last line: the lowest figures over the scans (volume: the range)."""
    low = {k: min(float(r[k]) for r in rows) for k in ("gmd_r", "gmd_r_4mm", "gmv_r_4mm", "dice_native")}
    ratios = [float(r["gm_volume_ratio"]) for r in rows]
    return (
        f"fidelity vs SPM12 ({len(rows)} scans, lowest): GMD r {low['gmd_r']:.2f} (4 mm {low['gmd_r_4mm']:.2f}), "
        f"GMV r 4 mm {low['gmv_r_4mm']:.2f}, GM volume {min(ratios):.2f}-{max(ratios):.2f}, Dice {low['dice_native']:.2f}"
    )
