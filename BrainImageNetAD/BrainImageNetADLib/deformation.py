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

Measured against SPM12's own maps (GMD r unsmoothed / at 4 mm), starting from the previous
pipeline's affine (mean squares of GM + WM on the priors' brain): Colin27 0.78/0.90 -> 0.88/0.92
with the likelihood affine alone; the Siemens MPRAGE scan, where the mean-squares affine was
tilted 2.5 degrees against SPM's, 0.57/0.83 -> 0.75/0.91 with the affine, 0.84/0.95 with the
displacement added (stiffness 5); IXI012 0.63/0.90 -> 0.84/0.95. A softer displacement (bending
energy only) helped the MPRAGE scan more (0.86/0.96) and pulled Colin27 away from SPM's maps
(0.80/0.90). In the whole pipeline (fast preset), every real reference scan agrees better with
SPM's maps the softer the displacement, and only Colin27, an average of 27 scans, agrees less:

| stiffness | Colin27 | MPRAGE | ROBEX ref. | IXI012 | IXI014 | IXI048 | Subj5 |
|---|---|---|---|---|---|---|---|
| 10 | 0.87/0.92 | 0.81/0.93 | 0.72/0.88 | 0.83/0.95 | 0.80/0.92 | 0.79/0.93 | 0.67/0.92 |
| 5 | 0.85/0.91 | 0.84/0.95 | 0.75/0.89 | 0.84/0.95 | 0.82/0.93 | 0.82/0.94 | 0.68/0.93 |
| 2.5 | 0.80/0.895 | 0.88/0.96 | 0.78/0.90 | 0.86/0.95 | 0.85/0.93 | 0.85/0.94 | 0.70/0.93 |
| 1.5 | 0.755/0.88 | 0.89/0.97 | 0.79/0.90 | - | 0.86/0.935 | - | - |

GM volume and native Dice moved by at most 0.01 (Subj5's Dice 0.853 -> 0.858). This table and
the measurements below were taken before ``bias_field`` was fitted in the mixture; with it, at
2.5: Colin27 0.80/0.90, MPRAGE 0.88/0.97, ROBEX reference 0.79/0.93, IXI 0.87/0.96, Subj5
0.71/0.94; with the class weights fitted too (``segment``), Colin27 0.81/0.905, MPRAGE 0.89/0.97,
ROBEX reference 0.81/0.945, IXI 0.87-0.88/0.96-0.97, Subj5 0.73/0.95. Bending energy added to the membrane (2.5 + 10 x the summed squared Laplacian) gave
the same trade (MPRAGE 0.87/0.96, Colin27 0.81/0.90). The presets took 2.5 while the segmentation
saw the N4-corrected scan: below it the real scans gained less (2.5 -> 1.5: +0.01 unsmoothed) than
Colin27 lost (-0.05). On the scan as read (``bias_field``) they take 1.5: 2.5 -> 1.5 (``bench
fidelity``, fast) MPRAGE 0.896/0.976 -> 0.906/0.981, IXI012 0.879/0.964 -> 0.898/0.967, IXI014
0.911/0.986 -> 0.929/0.989, IXI048 0.915/0.983 -> 0.927/0.986, ROBEX reference 0.836/0.961 ->
0.847/0.965, Subj5 (whose SPM reference misses the top of the brain) 0.722/0.965 -> 0.700/0.961,
Colin27 0.793/0.888 -> 0.753/0.874; GM volume within 0.006 and native Dice within 0.003 of each
other. The real scans are what the tool reads: every one of them but Subj5 comes closer to SPM's
maps, the only 1 mm one (MPRAGE) past 0.90 unsmoothed. On the
real scans (`bench realscans`) nothing else moved (stiffness 5 -> 2.5): the same QC outcomes;
against DLMUSE, TIV/ICV within 4 % of the median ratio, TIV r 0.95 -> 0.96, GM r 0.93 both,
hippocampus r 0.81 -> 0.80.

The steps reach the penalised optimum: L-BFGS on the whole field (no smoothing of the gradient,
60 iterations a round) gave the same maps (stiffness 2.5: MPRAGE 0.880/0.963, Colin27
0.800/0.895; with 15 iterations a round it stopped short, 0.877/0.960 and 0.819/0.900), and so
did a lattice 2 mm apart with the stiffness scaled to keep the same balance with the likelihood
(2.25 x: 0.880/0.962, 0.800/0.895) in 2-2.6x the time. SPM's form of the regulariser (its
weights 0.001 membrane, 0.5 bending, linear elasticity mu 0.05 and lambda 0.2, converted to
lattice steps of 3 mm: membrane 0.051, divergence 0.25 and bending 0.056, all times a scale)
gives the same trade as the stiffness: scale 49 (the membrane part as now) MPRAGE 0.860/0.954,
Colin27 0.819/0.901; scale 10 both worse (0.835/0.960, 0.688/0.854). Neither the optimiser nor
the regulariser's form separates these maps from SPM's; the mapping bounds the unsmoothed
agreement all the same: SPM's own ``c1`` pushed through it agrees with SPM's ``wc1`` at r 0.874
(MPRAGE), 0.835 (Colin27) and 0.827 (ROBEX reference) unsmoothed, 0.94-0.96 at 4 mm.

How our mapping and SPM's change volume locally, measured as the log of the smoothed modulated
map over the smoothed unmodulated one (``gmv`` / ``gmd``, SPM's ``mwc1`` / ``wc1``: the volume
that lands in each MNI voxel), where both smoothed GM maps exceed 0.3 (fast preset, class
weights): the overall scale agrees on every reference scan (mean log within 0.012), and so does
the pattern on the 1 mm and 1.5 mm scans (r 0.96 MPRAGE, 0.91 ROBEX reference, Gaussian of 6 mm
SD); on the 2 mm scans r 0.63-0.88. Ours varies more than SPM's (SD 0.012-0.036 against
0.008-0.031 at 6 mm: 1.2-1.6x), except on Colin27, where SPM's varies by 0.001 and ours by 0.036:
SPM's Colin27 maps come from a mapping with hardly any local volume change, close to an affine.
With the displacement switched off (affine only) ours agree better with them (Colin27 0.809/0.905
-> 0.868/0.927, volume 1.247x -> 1.231x) and worse on the real scans (MPRAGE 0.889/0.970 ->
0.754/0.915): Colin27 and the real scans pull the stiffness in opposite directions because
SPM's reference for Colin27 is unwarped: SPM's displacement came back NaN at its first step and
its maps went through the affine alone (``fidelity``'s docstring). Against SPM on the same scan
where its fit works (zeros added around the head), our Colin27 maps agree at 0.92/0.98, GM
volume 0.98x, with the displacement of stiffness 1.5. Two ways of bringing the local volume change
closer to SPM's were measured and not adopted: a penalty on the displacement's divergence added
to the membrane (4 and 16 x the membrane's weight: MPRAGE 0.889 -> 0.870 -> 0.864 unsmoothed,
ROBEX reference 0.809 -> 0.835 -> 0.827, Colin27 0.809 -> 0.806 -> 0.831; 4 mm within 0.01), and
SPM's heavy-to-light schedule (the stiffness 32, 16, 8, 4, 2 and 1 x its value over the six rounds
of the fast preset: every figure within 0.004 of the constant stiffness's).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize

from . import segment

#: FWHM (mm) of the Gaussian that smooths the gradient of the displacement before each step.
PRECONDITION_MM = 24.0


class PriorSampler:
    """SPM12's priors (121, 145, 121, 6) on the MNI grid, sampled at MNI voxel positions
    (trilinear; outside the grid: the nearest edge voxel, which is air, so that the likelihood
    stays continuous there), with their spatial gradients (per MNI voxel).

    SPM12 samples them differently: the exponential of the interpolated log(prior + 1e-4),
    renormalised, its interpolation a quadratic B-spline over the voxel values (a slight blur).
    Both were measured in the whole pipeline (fast preset, stiffness 5) and gave the same maps as
    the linear priors (GMD r against SPM's unsmoothed / at 4 mm, log-linear and log-quadratic):
    Colin27 0.847/0.910 -> 0.844/0.908 and 0.845/0.909, MPRAGE 0.84/0.95 -> 0.84/0.95 both,
    ROBEX reference 0.75/0.89 -> 0.75/0.89 both, IXI014 0.82/0.93 -> 0.82/0.93 both; GM volume
    within 0.1 %. The linear sampling stays: it is the cheaper one."""

    def __init__(self, tpm: np.ndarray) -> None:
        self.tpm = np.ascontiguousarray(np.moveaxis(tpm.astype(np.float32), -1, 0))
        self.gradient = np.stack([np.stack(np.gradient(t), axis=0) for t in self.tpm], axis=0)

    def priors(self, positions: np.ndarray) -> np.ndarray:
        """Priors at ``positions`` (N, 3, MNI voxels): (N, 6) float64, each row summing to 1."""
        values = np.stack(
            [ndimage.map_coordinates(t, positions.T, order=1, mode="nearest") for t in self.tpm],
            axis=1,
        ).astype(np.float64)
        values = values.clip(1e-4, None)
        return values / values.sum(axis=1, keepdims=True)

    def log_likelihood_and_gradient(
        self, positions: np.ndarray, likelihoods: np.ndarray, weights: np.ndarray, priors: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        """Log-likelihood of the voxels at ``positions`` (N, 3, MNI voxels) with class
        ``likelihoods`` (N, 6) under the priors there rescaled by the class ``weights`` (6,)
        (``log_likelihood``; ``priors`` (N, 6): those priors when they have been sampled already,
        which spares sampling them again) and its gradient with respect to the positions (N, 3,
        per MNI voxel), sum_k w_k grad b_k (L_k / sum_j w_j b_j L_j - 1 / sum_j w_j b_j), taken
        with the priors' gradients (central differences on their grid, interpolated): within a
        cell it follows the exact derivative of the trilinear priors (correlation about 0.98,
        about 5 % smaller; a test). The exact derivative (forward differences sampled on the
        cell's face) gave the same maps: GMD r against SPM's Colin27 0.870 (0.873 with this one),
        MPRAGE 0.810 (0.807), ROBEX reference 0.723 (0.720)."""
        if priors is None:
            priors = self.priors(positions)
        voxel, total = _voxel_likelihoods(priors, likelihoods, weights)
        coefficients = weights / total * (likelihoods / voxel - 1.0)
        gradient = np.zeros_like(positions, dtype=np.float64)
        for k, per_class in enumerate(self.gradient):
            for axis in range(3):
                gradient[:, axis] += coefficients[:, k] * ndimage.map_coordinates(per_class[axis], positions.T, order=1, mode="nearest")
        return float(np.log(voxel).sum()), gradient


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
        # The gradient only where a step starts (trial steps the line search rejects need the
        # value alone), with the priors the accepted step sampled.
        field = stiffness * _laplacian(displacement)
        field[valid] += sampler.log_likelihood_and_gradient(positions[valid] + displacement[valid], likelihoods, weights, priors)[1]
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
