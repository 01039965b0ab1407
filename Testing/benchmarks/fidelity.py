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

A reference is only as good as SPM's fit. A folder may also hold SPM's ``*_seg8.mat`` (Segment
writes it beside the maps: the fitted mixture, bias field, affine ``Affine`` and displacement
``Twarp``, log-likelihood ``ll``); the benchmark then reads ``Twarp`` and ``ll`` and reports the
scan's SPM fit as ``ok`` or ``failed`` (``unchecked`` without the file), and leaves failed fits
out of its last line.

What a failed SPM fit looks like (Colin27 in ``../shared``) and SPM's own run-to-run scatter:
docs/validation.md.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.model.maps import load_nifti

#: Smoothing applied to both maps for the smoothed correlations (FWHM, mm).
SMOOTHING_MM = 4.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class ReferenceScan:
    """One scan of a reference folder: its name, input scan, SPM12's maps and, when the folder
    holds it, SPM's ``*_seg8.mat`` (its fitted parameters)."""

    name: str
    source: Path
    wc1: Path
    mwc1: Path
    c1: Path
    seg8: Path | None = None


def reference_scans(reference_dir: str | Path) -> list[ReferenceScan]:
    """The scans of an SPM12 reference folder (see the module docstring), sorted by name."""
    root = Path(reference_dir)
    if not root.is_dir():
        raise InputError(f"{root}: reference folder not found")
    scans = []
    for folder in sorted(p for p in root.iterdir() if (p / "source.txt").is_file()):
        text = (folder / "source.txt").read_text(encoding="utf-8").strip().splitlines()[0]
        source = Path(text) if Path(text).is_absolute() else root.parent.parent / text
        found = {prefix: sorted(folder.glob(f"{prefix}*.nii*")) for prefix in ("wc1", "mwc1", "c1")}
        if any(len(v) != 1 for v in found.values()):
            raise InputError(f"{folder}: expected one wc1*, one mwc1* and one c1* map")
        seg8 = sorted(folder.glob("*_seg8.mat"))
        if len(seg8) > 1:
            raise InputError(f"{folder}: expected at most one *_seg8.mat")
        maps = (found["wc1"][0], found["mwc1"][0], found["c1"][0])
        scans.append(ReferenceScan(folder.name, source, *maps, seg8[0] if seg8 else None))
    if not scans:
        raise InputError(f"{root}: no scan folders with a source.txt")
    return scans


def reference_fit(seg8: Path | None) -> str:
    """Whether SPM's fit behind a reference worked, from its ``*_seg8.mat`` (MATLAB 5/6/7 format,
    as SPM saves it; only ``Twarp`` and ``ll`` are read): ``ok``, ``failed: ...`` when the
    displacement (``Twarp``, lattice (X, Y, Z, 3), voxels) or the log-likelihood is not finite (see
    the module docstring), ``unchecked`` without the file."""
    if seg8 is None:
        return "unchecked"
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        fitted = loadmat(str(seg8), variable_names=["Twarp", "ll"], squeeze_me=True)
    except (OSError, ValueError, TypeError, NotImplementedError, MatReadError) as error:
        raise InputError(f"{seg8}: not a MATLAB file SPM's Segment writes ({error})") from None
    if "Twarp" not in fitted or "ll" not in fitted:
        raise InputError(f"{seg8}: no Twarp or ll; not SPM Segment's parameters")
    twarp = np.asarray(fitted["Twarp"], dtype=np.float64)
    if not np.isfinite(twarp).all():
        share = float((~np.isfinite(twarp)).mean())
        return f"failed: displacement not finite in {share:.0%} of its lattice (maps through the affine alone)"
    if not np.isfinite(float(fitted["ll"])):
        return "failed: log-likelihood not finite"
    return "ok"


def spm_affine(seg8: Path) -> np.ndarray:
    """SPM's ``Affine`` from its ``*_seg8.mat``: 4x4, the scan's world mm (RAS) to MNI world mm
    (RAS), the part of its mapping before the displacement ``Twarp``."""
    from scipy.io import loadmat

    return np.asarray(loadmat(str(seg8), variable_names=["Affine"])["Affine"], dtype=np.float64)


def spm_positions(seg8: Path, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Where SPM's fit put each voxel of the scan it segmented (grid ``shape``, voxel-to-world
    ``affine``, RAS mm): MNI world mm (RAS), array (X, Y, Z, 3). SPM maps voxel v to
    ``Affine`` x (voxel-to-world) x (v + Twarp(v)): ``Twarp`` is a displacement in the scan's
    voxels on a lattice of every k-th voxel, interpolated here trilinearly (pushing SPM's ``c1``
    through these positions gives its ``wc1`` at r 1.000 on the elderly references)."""
    from scipy.io import loadmat

    twarp = np.asarray(loadmat(str(seg8), variable_names=["Twarp"])["Twarp"], dtype=np.float64)
    step = np.round(np.array(shape) / np.array(twarp.shape[:3]))
    voxels = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    lattice = (voxels / step).T
    moved = voxels + np.stack([ndimage.map_coordinates(twarp[..., a], lattice, order=1, mode="nearest") for a in range(3)], axis=1)
    matrix = spm_affine(seg8) @ affine
    return (moved @ matrix[:3, :3].T + matrix[:3, 3]).reshape(*shape, 3)


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance (mm) between corresponding points (N, 3)."""
    return float(np.linalg.norm(a - b, axis=1).mean())


def mapping_agreement(scan: ReferenceScan, preprocessing_dir: str | Path) -> dict[str, float]:
    """How far our mapping to MNI lies from SPM's, and what our native GM gives through SPM's:
    ``mapping_mm``, the mean distance (mm) between where the two put the voxels of SPM's grey
    matter (``c1`` > 0.5); ``affine_mm``, the same for the two affine parts alone;
    ``displacement_mm`` and ``spm_displacement_mm``, how far each displacement moves those voxels
    beyond its affine (mean, mm); ``gmd_r_spm_mapping``, our GM in the scan's space pushed to MNI
    through SPM's mapping against ``wc1`` (unsmoothed r). Empty where the folder has no
    ``*_seg8.mat`` or our GM does not lie on ``c1``'s grid (scans segmented on the 1 mm grid)."""
    import nibabel as nib

    from BrainImageNetADLib.preprocessing.normalise import warped_maps
    from BrainImageNetADLib.preprocessing.transforms import native_points_to_mni

    if scan.seg8 is None or reference_fit(scan.seg8) != "ok":
        return {}
    c1 = nib.load(str(scan.c1))
    ours = nib.load(str(Path(preprocessing_dir) / "gm_native.nii.gz"))
    if ours.shape != c1.shape or not np.allclose(ours.affine, c1.affine, atol=1e-3):
        return {}
    spm = spm_positions(scan.seg8, c1.shape, c1.affine)
    grey = np.asarray(c1.dataobj, dtype=np.float32) > 0.5
    voxels = np.moveaxis(np.indices(c1.shape), 0, -1)[grey]
    world = voxels @ c1.affine[:3, :3].T + c1.affine[:3, 3]
    ours_mni = native_points_to_mni(world, preprocessing_dir)
    ours_affine = native_points_to_mni(world, preprocessing_dir, displacement=False)
    matrix = spm_affine(scan.seg8)
    spm_affine_mni = world @ matrix[:3, :3].T + matrix[:3, 3]
    gm = np.asarray(ours.dataobj, dtype=np.float32)
    pushed, _, _ = warped_maps(gm.reshape(-1, 1), spm.reshape(-1, 3).astype(np.float32), float(abs(np.linalg.det(c1.affine[:3, :3]))))
    wc1 = _on_mni_grid(scan.wc1, "wc1")
    return {
        "mapping_mm": _mean_distance(ours_mni, spm[grey]),
        "affine_mm": _mean_distance(ours_affine, spm_affine_mni),
        "displacement_mm": _mean_distance(ours_mni, ours_affine),
        "spm_displacement_mm": _mean_distance(spm[grey], spm_affine_mni),
        "gmd_r_spm_mapping": _correlation(pushed[..., 0], wc1, (pushed[..., 0] > 0.05) | (wc1 > 0.05)),
    }


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


def scan_fidelity(scan: ReferenceScan, preset: str = "fast", out_dir: str | Path | None = None) -> dict[str, Any]:
    """Preprocess a reference scan (in a child process) and measure its agreement with SPM12's
    maps. The preprocessing goes to ``out_dir`` and is reused from there when finished (a
    temporary folder when None)."""
    import json

    from BrainImageNetADLib.core.worker import run_isolated
    from BrainImageNetADLib.preprocessing.preprocess import is_done, preprocess_t1

    with tempfile.TemporaryDirectory(prefix="brainimagenet-fidelity-") as scratch:
        out = Path(out_dir) if out_dir is not None else Path(scratch)
        report = (
            json.loads((out / "qc.json").read_text(encoding="utf-8"))
            if is_done(out)
            else run_isolated(preprocess_t1, scan.source, out, preset)
        )
        measures = preprocessed_agreement(scan, out)
    return {
        "scan": scan.name,
        **measures,
        "qc": report["verdict"],
        "spm_fit": reference_fit(scan.seg8),
        "seconds": float(report["seconds"]["total"]),
    }


def folder_map_agreement(scan: ReferenceScan, preprocessing_dir: str | Path) -> dict[str, float]:
    """``map_agreement`` of the GMD and GMV maps of a finished preprocessing folder of ``scan``."""
    out = Path(preprocessing_dir)
    gmd = _on_mni_grid(out / "gmd.nii.gz", "GMD")
    gmv = _on_mni_grid(out / "gmv.nii.gz", "GMV")
    return map_agreement(gmd, gmv, _on_mni_grid(scan.wc1, "wc1"), _on_mni_grid(scan.mwc1, "mwc1"))


def preprocessed_agreement(scan: ReferenceScan, preprocessing_dir: str | Path) -> dict[str, float]:
    """``folder_map_agreement``, ``native_dice`` and ``mapping_agreement`` of a finished
    preprocessing folder of ``scan``."""
    out = Path(preprocessing_dir)
    return {**folder_map_agreement(scan, out), "dice_native": native_dice(out, scan.c1), **mapping_agreement(scan, out)}


#: SPM12's Segment on the 2 mm elderly references, seconds per scan on one thread (its README).
SPM_SECONDS_2MM = (85, 120)


def timing_line(rows: list[dict[str, Any]]) -> str:
    """Our preprocessing time per scan beside SPM's (``SPM_SECONDS_2MM``)."""
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
    return (
        f"time per scan: ours {min(seconds):.0f}-{max(seconds):.0f} s (all scans, this run); "
        f"SPM12's Segment {SPM_SECONDS_2MM[0]}-{SPM_SECONDS_2MM[1]} s per 2 mm scan on one thread"
    )


def summary_line(rows: list[dict[str, Any]]) -> str:
    """The benchmark's last line: the lowest figures over the scans (volume: the range), leaving
    out scans whose SPM fit failed (``spm_fit``, see ``reference_fit``)."""
    kept = [r for r in rows if not str(r.get("spm_fit", "")).startswith("failed")]
    left_out = len(rows) - len(kept)
    if not kept:
        return f"fidelity vs SPM12: every SPM fit failed ({left_out} scans); nothing to compare"
    low = {k: min(float(r[k]) for r in kept) for k in ("gmd_r", "gmd_r_4mm", "gmv_r_4mm", "dice_native")}
    ratios = [float(r["gm_volume_ratio"]) for r in kept]
    failed = f"; {left_out} failed SPM fits left out" if left_out else ""
    return (
        f"fidelity vs SPM12 ({len(kept)} scans, lowest{failed}): GMD r {low['gmd_r']:.2f} (4 mm {low['gmd_r_4mm']:.2f}), "
        f"GMV r 4 mm {low['gmv_r_4mm']:.2f}, GM volume {min(ratios):.2f}-{max(ratios):.2f}, Dice {low['dice_native']:.2f}"
    )
