"""Scans of other contrasts made from real T1 scans by a physical model of tissue intensity.

Each voxel of a T1 is a mixture of at most two neighbouring tissues (air or bone and CSF, CSF and
grey matter, grey and white matter), so its intensity lies between theirs. Replacing the tissue
intensities (CSF, GM, WM levels measured on the T1) with those of another contrast and
interpolating between them keeps the anatomy, the partial volume, the noise texture and the
bias field of the real scan, and changes only what the sequence would change."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: Tissue intensities of other contrasts, relative to white matter (CSF, GM, WM). Typical values at
#: 1.5-3 T: T2 weighting (CSF brightest, grey above white), FLAIR (CSF nulled, grey above white),
#: and two scans without a usable grey/white difference.
CONTRASTS = {
    "t2_like": (2.0, 1.3, 1.0),
    "flair_like": (0.15, 1.1, 1.0),
    "grey_equals_white": (0.2, 1.0, 1.0),
    "grey_barely_below_white": (0.45, 0.96, 1.0),
}


def remap(data: np.ndarray, levels: tuple[float, float, float], targets: tuple[float, float, float]) -> np.ndarray:
    """``data`` (a T1, any shape) with its CSF, GM and WM ``levels`` (scan units, increasing)
    moved to ``targets`` (multiples of the WM level): piecewise linear between the levels and
    zero, proportional above white matter (fat and marrow keep their ratio to it)."""
    csf, gm, wm = levels
    out = np.interp(data, [0.0, csf, gm, wm], [0.0, *(t * wm for t in targets)])
    above = data > wm
    out[above] = data[above] * targets[2]
    return out.astype(np.float32)


def write_remapped(t1: Path, levels: tuple[float, float, float], targets: tuple[float, float, float], out: Path) -> Path:
    """Write ``t1`` remapped (``remap``) as a float32 NIfTI with the same header geometry."""
    image = nib.load(str(t1))
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(remap(data, levels, targets), image.affine), str(out))
    return out
