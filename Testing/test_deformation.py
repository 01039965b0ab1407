"""Placing SPM12's priors on a scan by the mixture's likelihood (real numpy/scipy, no
preprocessing run): a synthetic 'scan' drawn from the priors themselves, moved by a known
mapping, must be put back where it came from."""

from __future__ import annotations

import numpy as np
import pytest
from tissue_scan import lattice_positions, scan_from_priors

from BrainImageNetADLib.preprocessing import deformation


def test_likelihood_affine_undoes_a_known_shift_and_scale(sampler) -> None:
    lattice = lattice_positions()
    # The scan's voxel v holds the tissue of MNI position A v: a 5 % larger head shifted 4 voxels.
    truth_affine = np.diag([1.05, 1.0, 0.97, 1.0])
    truth_affine[:3, 3] = [4.0, -3.0, 2.0]
    truth = lattice @ truth_affine[:3, :3].T + truth_affine[:3, 3]
    intensities, _, model = scan_from_priors(sampler, truth, 6.0)
    found = deformation.fit_affine(
        lattice.reshape(-1, 3), deformation.class_likelihoods(intensities.ravel(), model), model.weights, sampler
    )
    # inside the brain the fitted positions are within a third of an MNI voxel (0.5 mm) of the truth
    brain = sampler.priors(truth.reshape(-1, 3))[:, :3].sum(axis=1) > 0.5
    fitted = lattice.reshape(-1, 3) @ found[:3, :3].T + found[:3, 3]
    error = np.linalg.norm(fitted - truth.reshape(-1, 3), axis=1)[brain]
    assert np.sqrt((error**2).mean()) < 0.33
    assert np.linalg.det(found[:3, :3]) == pytest.approx(np.linalg.det(truth_affine[:3, :3]), rel=0.02)


def test_displacement_moves_towards_a_known_local_warp(sampler) -> None:
    lattice = lattice_positions()
    # a smooth bump of up to 2 MNI voxels (3 mm) along the first axis in one hemisphere
    centre = np.array([40.0, 70.0, 60.0])
    bump = 2.0 * np.exp(-((lattice - centre) ** 2).sum(axis=-1) / (2 * 15.0**2))
    warp = np.zeros_like(lattice)
    warp[..., 0] = bump
    intensities, _, model = scan_from_priors(sampler, lattice + warp, 6.0, seed=1)
    valid = intensities > -np.inf
    likelihoods = deformation.class_likelihoods(intensities[valid], model)
    found, priors = deformation.fit_displacement(lattice, valid, likelihoods, model.weights, sampler, np.zeros_like(lattice), 3.0, 1.0, 40)
    # the priors handed back are those at the positions the displacement reached
    np.testing.assert_array_equal(priors, sampler.priors((lattice + found)[valid]))
    near = bump > 1.0
    before = np.abs(warp[near]).mean()
    after = np.abs((warp - found)[near]).mean()
    assert after < 0.6 * before
    # away from the bump the displacement stays small (the regularisation holds the rest still)
    assert np.abs(found[bump < 0.05]).mean() < 0.25


def test_likelihood_gradient_follows_finite_differences(sampler) -> None:
    # Positions inside the brain, away from voxel centres: within a cell of the priors' grid the
    # trilinear priors have an exact derivative, which the gradient is made of.
    rng = np.random.default_rng(2)
    positions = np.array([60.0, 72.0, 60.0]) + rng.uniform(-25.0, 25.0, (400, 3))
    positions = np.floor(positions) + rng.uniform(0.2, 0.8, positions.shape)
    # class weights far from uniform, so that their part of the gradient counts
    weights = np.array([0.3, 0.1, 0.25, 0.1, 0.15, 0.1])
    intensities, _, model = scan_from_priors(sampler, positions[:, None, None, :], 6.0, seed=3, weights=weights)
    likelihoods = deformation.class_likelihoods(intensities.ravel(), model)
    value, gradient = sampler.log_likelihood_and_gradient(positions, likelihoods, model.weights)
    assert value == pytest.approx(deformation.log_likelihood(sampler.priors(positions), likelihoods, model.weights))

    def per_voxel(at: np.ndarray) -> np.ndarray:
        return np.array(
            [deformation.log_likelihood(sampler.priors(at[i : i + 1]), likelihoods[i : i + 1], model.weights) for i in range(len(at))]
        )

    here = per_voxel(positions)
    step = 1e-3
    for axis in range(3):
        moved = positions.copy()
        moved[:, axis] += step
        numeric = (per_voxel(moved) - here) / step
        assert np.corrcoef(numeric, gradient[:, axis])[0, 1] > 0.99
        slope = numeric @ gradient[:, axis] / (gradient[:, axis] @ gradient[:, axis])
        assert 0.97 < slope < 1.03


def test_priors_are_the_trilinear_interpolation_clamped_at_the_grid_edge(sampler) -> None:
    """At voxel centres the priors are the grid's own (normalised); between them, and beyond the
    grid's edge (clamped to the edge voxel), they are SciPy's linear interpolation; the
    derivative is zero along an axis on which the position lies outside the grid."""
    from scipy import ndimage

    from BrainImageNetADLib.core import templates

    tpm = templates.spm_tissue_priors()
    rng = np.random.default_rng(4)
    shape = np.array(tpm.shape[:3])
    positions = rng.uniform(-4.0, shape + 3.0, (2000, 3))
    expected = np.stack([ndimage.map_coordinates(tpm[..., k], positions.T, order=1, mode="nearest") for k in range(6)], axis=1)
    expected = expected.astype(np.float64).clip(1e-4, None)
    np.testing.assert_allclose(sampler.priors(positions), expected / expected.sum(axis=1, keepdims=True), atol=1e-6)
    centre = tpm[60, 72, 60].astype(np.float64).clip(1e-4, None)
    np.testing.assert_allclose(sampler.priors(np.array([[60, 72, 60]]))[0], centre / centre.sum(), atol=1e-6)
    outside = np.array([[-2.0, 70.0, 60.0]])
    likelihoods = np.ones((1, 6))
    likelihoods[0, 0] = 5.0
    assert sampler.log_likelihood_and_gradient(outside, likelihoods, np.full(6, 1 / 6))[1][0, 0] == 0.0
