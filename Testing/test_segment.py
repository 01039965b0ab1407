"""The tissue mixture with SPM12's priors and the push of native maps onto the MNI grid (real
numpy/ANTs, no preprocessing run)."""

from __future__ import annotations

import numpy as np
import pytest
from tissue_scan import lattice_positions, scan_from_priors

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.preprocessing import deformation, normalise, segment


def test_spm_priors_come_from_the_installed_package() -> None:
    tpm = templates.spm_tissue_priors()
    assert tpm.shape == (*grid.MNI_SHAPE, 6) and tpm.dtype == np.float32
    np.testing.assert_allclose(tpm.sum(axis=-1), 1.0, atol=1e-4)
    # GM fills the cortex, air the corners, and the brain classes hold a plausible volume (mL).
    brain_ml = float(tpm[..., :3].sum() * grid.MNI_VOXEL_MM3 / 1000)
    assert 1700 < brain_ml < 2100 and tpm[0, 0, 0, 5] > 0.9


def test_mixture_recovers_tissue_intensities_where_priors_are_vague() -> None:
    rng = np.random.default_rng(0)
    n = 60_000
    truth = rng.choice(6, size=n, p=[0.3, 0.3, 0.15, 0.1, 0.1, 0.05])
    centre = np.array([60.0, 100.0, 25.0, 15.0, 70.0, 2.0])
    intensities = centre[truth] + rng.normal(0, 5.0, n)
    # priors: 0.5 on the true class, the rest spread evenly (a prior that alone would mislabel half)
    priors = np.full((n, 6), 0.1)
    priors[np.arange(n), truth] = 0.5
    model = segment.fit_mixture(intensities, priors, segment.initial_model(intensities, priors), 60)
    summary = model.summary()
    assert summary["GM_mean"] == pytest.approx(60, abs=3) and summary["WM_mean"] == pytest.approx(100, abs=3)
    labels = segment.posteriors(intensities, priors, model, chunk=7_000).argmax(axis=1)
    assert (labels[truth < 2] == truth[truth < 2]).mean() > 0.95  # soft tissue (70) overlaps GM (60) a little


def _fitted_weights(
    sampler: deformation.PriorSampler, truth_weights: np.ndarray
) -> tuple[segment.MixtureModel, np.ndarray, np.ndarray, np.ndarray]:
    """A scan drawn from the priors rescaled by ``truth_weights`` on a 3 mm lattice, its mixture
    refitted from the true Gaussians with uniform weights: the fitted model, the priors, the
    intensities and the drawn classes (all flat over the lattice)."""
    positions = lattice_positions()
    intensities, labels, model = scan_from_priors(sampler, positions, 12.0, seed=5, weights=truth_weights)
    priors = sampler.priors(positions.reshape(-1, 3))
    start = segment.MixtureModel(model.means, model.variances, model.mixing, segment.uniform_weights())
    return segment.fit_mixture(intensities.ravel(), priors, start, 30), priors, intensities.ravel(), labels.ravel()


def test_class_weights_follow_a_shift_of_tissue_from_the_priors(sampler) -> None:
    # An atrophied brain: twice the CSF and two thirds of the grey matter the priors expect.
    truth = segment.uniform_weights() * np.array([2 / 3, 1.0, 2.0, 1.0, 1.0, 1.0])
    model, priors, intensities, labels = _fitted_weights(sampler, truth / truth.sum())
    gm, csf = segment.CLASSES.index("GM"), segment.CLASSES.index("CSF")
    # the weights follow: CSF up, GM down, the rest between
    assert model.weights[csf] > 1.2 * model.weights[1] and model.weights[1] > 1.1 * model.weights[gm]
    # and the CSF the posteriors find comes closer to the CSF drawn than with the priors unweighted
    unweighted = segment.MixtureModel(model.means, model.variances, model.mixing, segment.uniform_weights())
    drawn = (labels == csf).sum()
    found = segment.posteriors(intensities, priors, model)[:, csf].sum()
    found_unweighted = segment.posteriors(intensities, priors, unweighted)[:, csf].sum()
    assert abs(found - drawn) < 0.85 * abs(found_unweighted - drawn)


def test_class_weights_stay_within_their_range_on_a_scan_far_from_the_priors(sampler) -> None:
    # Five times the CSF and a fifth of the grey matter the priors expect, the kind of scan on
    # which SPM12's free weights run away: the weights go as far as their range and no further.
    truth = segment.uniform_weights() * np.array([1 / 5, 1.0, 5.0, 1.0, 1.0, 1.0])
    model, *_ = _fitted_weights(sampler, truth / truth.sum())
    gm, csf = segment.CLASSES.index("GM"), segment.CLASSES.index("CSF")
    assert model.weights.argmax() == csf and model.weights.argmin() == gm
    assert model.weights[csf] / model.weights[gm] == pytest.approx(segment.WEIGHT_RANGE**2, rel=1e-6)


def test_class_weights_stay_uniform_when_the_scan_follows_the_priors(sampler) -> None:
    model, *_ = _fitted_weights(sampler, segment.uniform_weights())
    np.testing.assert_allclose(model.weights / model.weights.mean(), 1.0, atol=0.05)


def test_push_keeps_the_volume_and_the_shares(tmp_path) -> None:
    # A native grid of 1 mm voxels placed in MNI space by the identity: each MNI voxel (1.5 mm)
    # receives 3.375 native voxels' worth of weight; the modulated map keeps the native volume.
    import ants

    tpm = templates.spm_tissue_priors()
    native = templates.ants_from_ras(
        np.zeros((150, 180, 150), np.float32), np.array([[1, 0, 0, -75], [0, 1, 0, -110], [0, 0, 1, -65], [0, 0, 0, 1.0]])
    )
    identity = str(tmp_path / "identity.mat")
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3), identity)
    ijk = np.indices(native.shape).reshape(3, -1)
    coordinates = (templates.ras_affine(native) @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3].T.reshape(*native.shape, 3)
    gm = ants.apply_transforms(native, templates.ants_from_ras(tpm[..., 0], grid.MNI_AFFINE), [identity]).numpy()
    tissues = np.stack([gm, 1.0 - gm], axis=-1)
    unmodulated, modulated, density = normalise.warped_maps(tissues, coordinates, 1.0)
    assert modulated[..., 0].sum() * grid.MNI_VOXEL_MM3 == pytest.approx(gm.sum(), rel=1e-4)
    inside = density > 0.5
    interior = np.zeros(grid.MNI_SHAPE, dtype=bool)
    interior[20:100, 20:120, 20:100] = True  # well inside the native box: 1 native mm^3 per MNI mm^3 on average
    assert density[interior].mean() == pytest.approx(1.0, abs=0.01) and inside[interior].all()
    np.testing.assert_allclose(unmodulated[inside].sum(axis=-1), 1.0, atol=1e-4)
    core = inside & (tpm[..., :3].sum(axis=-1) > 0.5)
    assert np.corrcoef(unmodulated[core, 0], tpm[core, 0])[0, 1] > 0.95
