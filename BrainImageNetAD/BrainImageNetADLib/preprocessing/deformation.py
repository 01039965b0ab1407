"""Alignment of SPM12's tissue priors to a scan, fitted on the mixture's own likelihood.

SPM12's Segment moves its priors onto the subject while it fits the mixture: its affine
(``spm_maff8``) and then its deformation are the ones under which the scan's intensities are most
probable. Here the same objective is climbed on the voxels the mixture is fitted on (3 mm
apart). Each voxel's position in MNI space is an affine of its position in the scan plus a
displacement (in MNI voxels of 1.5 mm); the log-likelihood is sum_i log sum_k b_k(y_i) L_k(x_i)
(b: the priors at y rescaled by the mixture's class weights, ``segment.weighted_priors``; L: the
likelihood of the intensity x under class k's Gaussians) and its gradient with respect to y_i is
sum_k L_k grad b_k / sum_k b_k L_k.

- The affine is fitted first (12 parameters, L-BFGS), alternated with the mixture.
- Then the displacement: steps along the gradient smoothed by a Gaussian (``PRECONDITION_MM``),
  kept only when the objective rises, the objective penalised by the membrane energy of the
  displacement (``stiffness`` times half the sum of its squared differences between neighbouring
  lattice voxels), which plays the part of SPM's regularisation of its warp.

The presets' stiffness (1.5) and what else was tried, with the figures:
docs/decisions/prior-mapping.md.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize

from . import segment

#: FWHM (mm) of the Gaussian that smooths the gradient of the displacement before each step.
PRECONDITION_MM = 24.0


class PriorSampler:
    """SPM12's priors (121, 145, 121, 6) on the MNI grid, sampled trilinearly at MNI voxel
    positions (outside the grid: at the nearest edge voxel, which is air, so that the likelihood
    stays continuous there), with the exact derivative of that trilinear interpolation (per MNI
    voxel; zero along an axis on which the position lies outside the grid).

    SPM12 samples them differently (log-domain, quadratic B-spline); that gave the same maps
    (docs/decisions/prior-mapping.md), and the linear sampling is the cheaper one. The eight
    corners of each position's cell are read in one gather from a table of the six priors per
    voxel, and the value and its three derivatives are one weighted sum of them."""

    def __init__(self, tpm: np.ndarray) -> None:
        tpm = np.asarray(tpm, dtype=np.float32)
        self.shape = np.array(tpm.shape[:3])
        self.table = np.ascontiguousarray(tpm.reshape(-1, tpm.shape[3]))
        self.strides = np.array([tpm.shape[1] * tpm.shape[2], tpm.shape[2], 1])
        self.corner_offsets = np.array([c @ self.strides for c in np.ndindex(2, 2, 2)])

    def _interpolate(self, positions: np.ndarray, derivative: bool) -> np.ndarray:
        """The trilinear priors (N, 6) at ``positions`` (N, 3, MNI voxels), with ``derivative``
        (N, 4, 6): the priors, then their derivatives along the three axes."""
        upper = self.shape - 1
        clipped = np.clip(positions, 0, upper)
        cell = np.minimum(clipped.astype(np.int64), upper - 1)
        fraction = (clipped - cell).astype(np.float32)
        corners = np.take(self.table, ((cell @ self.strides)[:, None] + self.corner_offsets).ravel(), axis=0)
        # Per output row and axis, the factor of the cell's lower and upper corner: the linear
        # weights (1 - f, f) for the value, (-1, 1) for the derivative along that axis.
        factors = np.stack([1.0 - fraction, fraction], axis=1)[:, None].repeat(4 if derivative else 1, axis=1)
        if derivative:
            inside = ((positions >= 0) & (positions <= upper)).astype(np.float32)
            for axis in range(3):
                factors[:, axis + 1, :, axis] = np.array([-1.0, 1.0], np.float32) * inside[:, axis, None]
        weights = factors[..., :, None, None, 0] * factors[..., None, :, None, 1] * factors[..., None, None, :, 2]
        out = np.matmul(weights.reshape(len(positions), -1, 8), corners.reshape(len(positions), 8, -1))
        return out if derivative else out[:, 0]

    def priors(self, positions: np.ndarray) -> np.ndarray:
        """Priors at ``positions`` (N, 3, MNI voxels): (N, 6) float64, each row summing to 1."""
        return _normalised(self._interpolate(positions, derivative=False))

    def log_likelihood_and_gradient(self, positions: np.ndarray, likelihoods: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
        """Log-likelihood of the voxels at ``positions`` (N, 3, MNI voxels) with class
        ``likelihoods`` (N, 6) under the priors there rescaled by the class ``weights`` (6,)
        (``log_likelihood``) and its gradient with respect to the positions (N, 3, per MNI
        voxel), sum_k w_k grad b_k (L_k / sum_j w_j b_j L_j - 1 / sum_j w_j b_j), with the
        exact derivative of the trilinear priors (the clipping and normalisation of
        ``priors`` left out of it)."""
        sampled = self._interpolate(positions, derivative=True)
        voxel, total = _voxel_likelihoods(_normalised(sampled[:, 0]), likelihoods, weights)
        coefficients = weights / total * (likelihoods / voxel - 1.0)
        gradient = np.einsum("nk,nak->na", coefficients, sampled[:, 1:].astype(np.float64))
        return float(np.log(voxel).sum()), gradient


def _normalised(values: np.ndarray) -> np.ndarray:
    """Sampled priors (N, 6) clipped below at 1e-4 and scaled to sum to 1 per row (float64)."""
    values = values.astype(np.float64).clip(1e-4, None)
    return values / values.sum(axis=1, keepdims=True)


def _voxel_likelihoods(priors: np.ndarray, likelihoods: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel's likelihood (N, 1), sum_k w_k b_k L_k / sum_j w_j b_j, and the rescaled priors'
    sum (N, 1), sum_j w_j b_j, for class ``likelihoods`` (N, 6), ``priors`` (N, 6) and class
    ``weights`` (6,)."""
    scaled = priors * weights
    total = scaled.sum(axis=1, keepdims=True)
    return (scaled * likelihoods).sum(axis=1, keepdims=True) / total + 1e-300, total


def log_likelihood(priors: np.ndarray, likelihoods: np.ndarray, weights: np.ndarray) -> float:
    """Log-likelihood of voxels with class ``likelihoods`` (N, 6) under the ``priors`` (N, 6)
    there rescaled by the class ``weights`` (6,): sum_i log sum_k w_k b_k L_k / sum_j w_j b_j."""
    return float(np.log(_voxel_likelihoods(priors, likelihoods, weights)[0]).sum())


def class_likelihoods(intensities: np.ndarray, model: segment.MixtureModel) -> np.ndarray:
    """Likelihood (N, 6) of each intensity (N,) under each class's Gaussians."""
    return segment.gaussian_likelihoods(intensities, model) @ segment.CLASS_MATRIX


def fit_affine(
    positions: np.ndarray, likelihoods: np.ndarray, weights: np.ndarray, sampler: PriorSampler, iterations: int = 50
) -> np.ndarray:
    """The 4x4 affine of MNI voxel positions that maximises the likelihood of the voxels at
    ``positions`` (N, 3, MNI voxels) with class ``likelihoods`` (N, 6) under the moved priors
    rescaled by the class ``weights`` (6,)."""
    center = positions.mean(axis=0)
    scale = 50.0
    design = np.hstack([(positions - center) / scale, np.ones((len(positions), 1))])

    def cost(params: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = sampler.log_likelihood_and_gradient(positions + design @ params.reshape(3, 4).T, likelihoods, weights)
        return -value, -(gradient.T @ design).ravel()

    params = optimize.minimize(cost, np.zeros(12), jac=True, method="L-BFGS-B", options={"maxiter": iterations}).x.reshape(3, 4)
    affine = np.eye(4)
    affine[:3, :3] += params[:, :3] / scale
    affine[:3, 3] = params[:, 3] - params[:, :3] @ center / scale
    return affine


def _laplacian(d: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.laplace(d[..., a], mode="nearest") for a in range(3)], axis=-1)


def _membrane(d: np.ndarray) -> float:
    return float(sum((np.diff(d, axis=a) ** 2).sum() for a in range(3)))


def fit_displacement(
    positions: np.ndarray,
    valid: np.ndarray,
    likelihoods: np.ndarray,
    weights: np.ndarray,
    sampler: PriorSampler,
    displacement: np.ndarray,
    spacing_mm: float,
    stiffness: float,
    steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` steps of the displacement (X, Y, Z, 3, MNI voxels) of a lattice of voxels
    ``spacing_mm`` apart: ``positions`` (X, Y, Z, 3) their affine MNI voxel positions, ``valid``
    (X, Y, Z) the voxels that count, ``likelihoods`` (n_valid, 6) their class likelihoods,
    ``weights`` (6,) the class weights of the priors.
    Returns the new displacement and the priors (n_valid, 6) at the valid voxels it moves to."""
    sigma = PRECONDITION_MM / spacing_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))

    def penalised(d: np.ndarray) -> tuple[float, np.ndarray]:
        moved = positions[valid] + d[valid]
        priors = sampler.priors(moved)
        return log_likelihood(priors, likelihoods, weights) - 0.5 * stiffness * _membrane(d), priors

    current, priors = penalised(displacement)
    step = 1.0
    for _ in range(steps):
        # The gradient only where a step starts: trial steps the line search rejects need the
        # value alone.
        field = stiffness * _laplacian(displacement)
        field[valid] += sampler.log_likelihood_and_gradient(positions[valid] + displacement[valid], likelihoods, weights)[1]
        field = np.stack([ndimage.gaussian_filter(field[..., a], sigma) for a in range(3)], axis=-1)
        field /= np.abs(field).max() + 1e-12
        while step > 1e-3:
            trial = displacement + step * field
            value, trial_priors = penalised(trial)
            if value > current:
                displacement, current, priors = trial, value, trial_priors
                step *= 1.5
                break
            step *= 0.5
        else:
            break
    return displacement, priors
