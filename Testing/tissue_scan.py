"""Synthetic scans drawn from SPM12's tissue priors, for the tests of the fits that move the
priors and correct the bias (real numpy, no preprocessing run)."""

from __future__ import annotations

import numpy as np

from BrainImageNetADLib.preprocessing import deformation, segment


def lattice_positions() -> np.ndarray:
    """MNI voxel positions (60, 72, 60, 3) of a lattice 2 MNI voxels (3 mm) apart over the priors' grid."""
    return np.moveaxis(np.indices((60, 72, 60)), 0, -1).astype(np.float64) * 2.0


#: Intensities of the synthetic classes (GM, WM, CSF, bone, soft tissue, air), T1-like.
MEANS = np.array([60.0, 100.0, 25.0, 15.0, 70.0, 2.0])


def scan_from_priors(
    sampler: deformation.PriorSampler, truth: np.ndarray, noise_sd: float, seed: int = 0, weights: np.ndarray | None = None
):
    """Intensities (X, Y, Z) whose tissue at voxel v is drawn from the priors at ``truth[v]``
    (X, Y, Z, 3 MNI voxel positions), rescaled by the class ``weights`` (6,; uniform when None),
    plus Gaussian noise of ``noise_sd``; returns them, the drawn class of each voxel (X, Y, Z) and
    the mixture that made them."""
    rng = np.random.default_rng(seed)
    weights = segment.uniform_weights() if weights is None else weights
    p = segment.weighted_priors(sampler.priors(truth.reshape(-1, 3)), weights)
    labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    intensities = MEANS[labels] + rng.normal(0.0, noise_sd, len(labels))
    model = segment.MixtureModel(
        means=np.repeat(MEANS, segment.GAUSSIANS),
        variances=np.full(13, noise_sd**2),
        mixing=np.repeat(1.0 / np.array(segment.GAUSSIANS), segment.GAUSSIANS),
        weights=weights,
    )
    return intensities.reshape(truth.shape[:3]), labels.reshape(truth.shape[:3]), model
