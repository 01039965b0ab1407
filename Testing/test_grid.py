"""The model grid: crop, affines and exact reordering of MNI-grid maps stored another way."""

from __future__ import annotations

import numpy as np
import pytest

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import InputError


def _random_mni_map(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(grid.MNI_SHAPE, dtype=np.float32)


def test_model_affine_is_the_crop_of_the_mni_affine() -> None:
    corner = grid.MNI_AFFINE @ np.array([*grid.CROP_START, 1.0])
    np.testing.assert_allclose(grid.MODEL_AFFINE[:, 3], corner)
    # MNI origin (0, 0, 0) lies at SPM voxel (60, 84, 48) of the full grid.
    np.testing.assert_allclose(grid.MNI_AFFINE @ np.array([60, 84, 48, 1.0]), [0, 0, 0, 1])


def test_crop_and_uncrop_round_trip() -> None:
    data = _random_mni_map()
    cropped = grid.crop_to_model_grid(data)
    assert cropped.shape == grid.MODEL_SHAPE
    np.testing.assert_array_equal(cropped, data[12:108, 13:133, 16:102])
    np.testing.assert_array_equal(grid.crop_to_model_grid(grid.uncrop_to_mni_grid(cropped)), cropped)


def test_flipped_and_permuted_storage_gives_the_same_model_input() -> None:
    data = _random_mni_map()
    expected = grid.to_model_grid(data, grid.MNI_AFFINE)
    # Same voxels stored with the x axis running left to right (positive x step).
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = grid.MNI_SHAPE[0] - 1
    np.testing.assert_array_equal(grid.to_model_grid(data[::-1], grid.MNI_AFFINE @ flip), expected)
    # Same voxels with axes stored in (k, i, j) order.
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1.0
    np.testing.assert_array_equal(grid.to_model_grid(data.transpose(2, 0, 1), grid.MNI_AFFINE @ perm), expected)


def test_cropped_grid_is_accepted_as_is() -> None:
    data = grid.crop_to_model_grid(_random_mni_map())
    np.testing.assert_array_equal(grid.to_model_grid(data, grid.MODEL_AFFINE), data)


def test_shifted_grid_is_rejected_with_the_shift() -> None:
    shifted = grid.MNI_AFFINE.copy()
    shifted[:3, 3] += [3.0, 0.0, 0.0]
    with pytest.raises(InputError, match=r"shifted by \[3.0, 0.0, 0.0\] mm"):
        grid.to_model_grid(_random_mni_map(), shifted)


@pytest.mark.parametrize(
    ("shape", "affine", "message"),
    [
        ((181, 217, 181), np.diag([1.0, 1.0, 1.0, 1.0]), "not on the model grid"),
        ((121, 145), grid.MNI_AFFINE, "expected a 3D map"),
        ((121, 145, 121, 3), grid.MNI_AFFINE, "expected a 3D map"),
    ],
)
def test_other_grids_are_rejected(shape: tuple[int, ...], affine: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        grid.to_model_grid(np.zeros(shape, dtype=np.float32), affine)
