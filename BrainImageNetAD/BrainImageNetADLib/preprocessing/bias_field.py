"""Intensity bias field fitted inside the tissue mixture, as SPM12's Segment fits it.

The scan's intensity y at a voxel is taken as b(x) times the tissue's own intensity, with
log b a sum of low-frequency cosines (a separable DCT-II over the segmented box, ``ceil(2 x
extent / FWHM_MM)`` functions along each axis, SPM's count). Its coefficients c maximise the
mixture's log-likelihood of the corrected intensities y b, plus the log-Jacobian sum log b, minus
0.5 c' C c: C is SPM's prior precision, ``REGULARISATION`` times the fudge factor for the
sampled voxels' spatial correlation, growing as exp(2 j^2 / sd^2) along each axis (j: the
frequency index, sd = extent / FWHM_MM), so that only smooth fields are cheap. Each step is SPM's
Gauss-Newton step (its gradient, and its Hessian simplified to y^2 b^2 sum_k q_k / var_k + 1 per
voxel), halved until the objective rises.

This field is the only bias correction the segmentation sees: it is fitted from a flat start on
the scan as read, as SPM fits it (N4, fitted in ``preprocess``, corrects only the T1 shown in MNI
space and measured by QC).
Why the scan as read and SPM's defaults, with the figures: docs/decisions/bias-field.md.
"""

from __future__ import annotations

import numpy as np

from . import segment

#: FWHM (mm) of the smoothest bias SPM's default regularisation lets through; it sets how many
#: cosines the field has along each axis.
FWHM_MM = 60.0
#: SPM12's default bias regularisation ("very light").
REGULARISATION = 0.001


def dct_basis(length: int, count: int) -> np.ndarray:
    """The first ``count`` orthonormal DCT-II functions over ``length`` voxels, at each voxel:
    (length, count)."""
    out = np.empty((length, count))
    out[:, 0] = 1.0 / np.sqrt(length)
    frequencies = np.arange(1, count)
    out[:, 1:] = np.sqrt(2.0 / length) * np.cos(
        np.pi * (2.0 * np.arange(length, dtype=float)[:, None] + 1.0) * frequencies / (2.0 * length)
    )
    return out


class BiasField:
    """A multiplicative bias field over a box of ``shape`` voxels of ``spacing_mm`` (mm per axis),
    fitted on the lattice of every ``steps``-th voxel per axis (the voxels the mixture is fitted
    on). ``coefficients`` (k1, k2, k3) start at 0 (a flat field)."""

    def __init__(self, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], steps: tuple[int, int, int]) -> None:
        counts, kernels = [], []
        for n, size in zip(shape, spacing_mm, strict=True):
            sd = size * n / FWHM_MM
            counts.append(int(np.ceil(2.0 * sd)))
            kernels.append(np.exp(-(np.arange(counts[-1]) ** 2) / sd**2) / np.sqrt(size))
        # SPM's fudge factor: the sampled voxels are not independent (image smoothness taken as
        # one voxel).
        s = float(np.mean(spacing_mm)) / np.sqrt(8.0 * np.log(2.0))
        fudge = float(np.prod(4.0 * np.pi * (s / np.asarray(spacing_mm) / np.asarray(steps)) ** 2 + 1.0) ** 0.5)
        self.precision = np.einsum("i,j,k->ijk", *kernels) ** -2 * REGULARISATION * fudge
        self.box_basis = [dct_basis(n, k) for n, k in zip(shape, counts, strict=True)]
        self.lattice_basis = [basis[::step] for basis, step in zip(self.box_basis, steps, strict=True)]
        self.coefficients = np.zeros(counts)

    def log_on_lattice(self, coefficients: np.ndarray | None = None) -> np.ndarray:
        """log b on the lattice (x, y, z), for ``coefficients`` or the current ones."""
        c = self.coefficients if coefficients is None else coefficients
        return np.einsum("xi,yj,zk,ijk->xyz", *self.lattice_basis, c, optimize=True)

    def on_box(self) -> np.ndarray:
        """b over the whole box (X, Y, Z) float32."""
        return np.exp(np.einsum("xi,yj,zk,ijk->xyz", *self.box_basis, self.coefficients, optimize=True)).astype(np.float32)

    def objective(
        self, coefficients: np.ndarray, lattice: np.ndarray, valid: np.ndarray, priors: np.ndarray, model: segment.MixtureModel
    ) -> float:
        """Penalised log-likelihood of the ``valid`` voxels (X, Y, Z bool) of ``lattice`` (the
        uncorrected intensities on the lattice, (X, Y, Z)) under the mixture with ``priors``
        (n_valid, 6), the field given by ``coefficients``."""
        log_b = self.log_on_lattice(coefficients)[valid]
        evidence = segment.class_evidence(lattice[valid] * np.exp(log_b), priors, model).sum(axis=1) + 1e-300
        return float(np.log(evidence).sum() + log_b.sum() - 0.5 * (coefficients * self.precision * coefficients).sum())

    def step(self, lattice: np.ndarray, valid: np.ndarray, priors: np.ndarray, model: segment.MixtureModel) -> None:
        """One Gauss-Newton step of the coefficients (arguments as for ``objective``), halved
        up to 12 times until the objective rises; none taken if it never does."""
        log_b = self.log_on_lattice()
        corrected = lattice[valid] * np.exp(log_b[valid])
        q = segment.class_evidence(corrected, priors, model)
        q /= q.sum(axis=1, keepdims=True) + 1e-300
        precision = 1.0 / model.variances
        gradient, hessian = np.zeros(lattice.shape), np.zeros(lattice.shape)
        gradient[valid] = -(1.0 + corrected * (q * precision * (model.means - corrected[:, None])).sum(axis=1))
        hessian[valid] = corrected**2 * (q * precision).sum(axis=1) + 1.0
        b1, b2, b3 = self.lattice_basis
        beta = np.einsum("xyz,xi,yj,zk->ijk", gradient, b1, b2, b3, optimize=True).ravel()
        alpha = np.einsum("xyz,xi,xa->iayz", hessian, b1, b1, optimize=True)
        alpha = np.einsum("iayz,yj,yb->iajbz", alpha, b2, b2, optimize=True)
        alpha = np.einsum("iajbz,zk,zc->ijkabc", alpha, b3, b3, optimize=True).reshape(beta.size, beta.size)
        c = self.coefficients
        update = np.linalg.solve(alpha + np.diag(self.precision.ravel()), beta + (self.precision * c).ravel()).reshape(c.shape)
        before = self.objective(c, lattice, valid, priors, model)
        fraction = 1.0
        for _ in range(12):
            if self.objective(c - fraction * update, lattice, valid, priors, model) >= before:
                self.coefficients = c - fraction * update
                return
            fraction *= 0.5
