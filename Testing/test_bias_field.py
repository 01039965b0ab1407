"""The bias field fitted inside the mixture (real numpy, no preprocessing run): a synthetic scan
drawn from SPM12's priors, multiplied by a known smooth field, must have that field found and
removed; a scan without one must be left flat."""

from __future__ import annotations

import numpy as np
import pytest
from tissue_scan import lattice_positions, scan_from_priors

from BrainImageNetADLib.preprocessing import bias_field


@pytest.fixture(scope="module")
def scan(sampler):
    """Intensities (60, 72, 60) on a 3 mm lattice of MNI positions 2 voxels apart, tissue drawn
    from the priors there; the priors (N, 6), the mixture that made the intensities, the drawn
    class of each voxel and the priors' brain (GM + WM > 0.5)."""
    positions = lattice_positions()
    intensities, labels, model = scan_from_priors(sampler, positions, 4.0, seed=4)
    priors = sampler.priors(positions.reshape(-1, 3))
    brain = priors[:, :2].sum(axis=1).reshape(60, 72, 60) > 0.5
    return intensities, priors, model, labels, brain


def _fit(intensities, priors, model, steps: int = 8) -> tuple[bias_field.BiasField, list[float]]:
    field = bias_field.BiasField(intensities.shape, (3.0, 3.0, 3.0), (1, 1, 1))
    valid = np.ones(intensities.shape, bool)
    values = [field.objective(field.coefficients, intensities, valid, priors, model)]
    for _ in range(steps):
        field.step(intensities, valid, priors, model)
        values.append(field.objective(field.coefficients, intensities, valid, priors, model))
    return field, values


def test_a_known_smooth_field_is_found_and_removed(scan) -> None:
    intensities, priors, model, labels, brain = scan
    x, y, z = np.indices(intensities.shape) / np.array(intensities.shape)[:, None, None, None]
    # up to about +-25 %: brighter towards the top and the front, as a head coil leaves it
    log_truth = 0.2 * (z - 0.5) + 0.15 * np.cos(np.pi * y) + 0.05 * np.cos(2 * np.pi * x)
    field, values = _fit(intensities * np.exp(-log_truth), priors, model)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False)), "each step raises the objective"
    found = field.log_on_lattice()
    assert np.corrcoef(found[brain], log_truth[brain])[0, 1] > 0.95
    assert np.sqrt(((found - log_truth)[brain] ** 2).mean()) < 0.01
    corrected = intensities * np.exp(-log_truth) * np.exp(found)
    white = labels == 1
    assert corrected[white].std() < 1.05 * intensities[white].std()
    # the box-wide field is the same function as the lattice one (here the same voxels)
    np.testing.assert_allclose(np.log(field.on_box()), field.log_on_lattice(), atol=1e-5)


def test_a_scan_without_bias_is_left_flat(scan) -> None:
    intensities, priors, model, _, brain = scan
    field, _ = _fit(intensities, priors, model, steps=4)
    assert np.abs(field.log_on_lattice()[brain]).max() < 0.02
