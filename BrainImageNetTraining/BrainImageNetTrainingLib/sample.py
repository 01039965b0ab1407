"""The quick sample maps shipped in ``Resources/Sample``, produced here deterministically from
the Colin27 single-subject T1 (Debian package ``mricron-data``, BSD-3-Clause)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from BrainImageNetADLib import grid
from BrainImageNetADLib.atomic import write_nifti_atomic

#: Colin27 brain-extracted T1 (1 mm, MNI space) from Debian's ``mricron-data``.
COLIN27_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


def _gaussian_mixture_posteriors(values: np.ndarray, iterations: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Three-class 1D Gaussian mixture by EM. Returns (posteriors (n, 3), means (3,)) with the
    classes sorted by mean intensity (CSF < GM < WM on a T1)."""
    means = np.quantile(values, [0.15, 0.5, 0.85])
    stds = np.full(3, values.std() / 3)
    weights = np.full(3, 1 / 3)
    for _ in range(iterations):
        log_p = -0.5 * ((values[:, None] - means) / stds) ** 2 - np.log(stds) + np.log(weights)
        log_p -= log_p.max(axis=1, keepdims=True)
        post = np.exp(log_p)
        post /= post.sum(axis=1, keepdims=True)
        n = post.sum(axis=0)
        means = (post * values[:, None]).sum(axis=0) / n
        stds = np.sqrt((post * (values[:, None] - means) ** 2).sum(axis=0) / n) + 1e-6
        weights = n / n.sum()
    order = np.argsort(means)
    return post[:, order], means[order]


def make_colin27_sample(out_dir: str | Path, source: Path = COLIN27_BRAIN) -> dict[str, Path]:
    """Write ``colin27_gmd.nii.gz`` and ``colin27_gmv.nii.gz`` (121x145x121, MNI 1.5 mm) to ``out_dir``.

    GMD is the grey-matter posterior of a three-class intensity mixture inside the Colin27 brain
    mask, resampled to the grid. Colin27 already lies in MNI space, so the Jacobian determinant of
    its warp is 1 and GMV equals GMD. A simple split for trying the networks without preprocessing, not a VBM pipeline.
    """
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: install Debian's mricron-data")
    image = nib.load(str(source))
    t1 = np.asanyarray(image.dataobj, dtype=np.float32)
    brain = t1 > 0
    posteriors, _ = _gaussian_mixture_posteriors(t1[brain].astype(np.float64))
    gm = np.zeros_like(t1)
    gm[brain] = posteriors[:, 1]
    gmd = np.clip(grid.resample_to_mni_grid(gm, image.affine), 0.0, 1.0)
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for kind, data in (("gmd", gmd), ("gmv", gmd)):
        written[kind.upper()] = write_nifti_atomic(
            out_dir / f"colin27_{kind}.nii.gz", data, grid.MNI_AFFINE, f"Colin27 quick sample {kind.upper()}"
        )
    return written
