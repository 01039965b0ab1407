"""Tissue maps from the scan's own grid onto the 121x145x121 MNI grid, written as SPM12 writes
its ``wc*`` and ``mwc*`` maps: each native voxel's tissue probability is pushed (trilinear
weights) to the MNI position the normalisation sends it to. The modulated map (GMV) is the pushed
sum times the native voxel volume over the MNI voxel volume, so its total is the native tissue
volume exactly; the unmodulated map (GMD) is the pushed sum over the pushed weight (the tissue's
share of what lands in the MNI voxel), with MNI voxels that nothing reaches filled from their
neighbours. Measured on the SPM12 reference scans, pushing agrees better with SPM's maps than
pulling the native map through the inverse mapping (IXI048 at 4 mm: r 0.77 vs 0.74).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core import grid


def push(values: np.ndarray, coordinates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Push native ``values`` (X, Y, Z, K) to the MNI grid at ``coordinates`` (X, Y, Z, 3, RAS
    mm) with trilinear weights. Returns the pushed sums (121, 145, 121, K) and the pushed weight
    (121, 145, 121), both float64 in MNI voxel order."""
    inside = np.isfinite(coordinates).all(axis=-1)
    to_voxels = np.linalg.inv(grid.MNI_AFFINE)
    position = coordinates[inside].astype(np.float64) @ to_voxels[:3, :3].T + to_voxels[:3, 3]
    data = values[inside].astype(np.float64)
    base = np.floor(position).astype(np.int64)
    fraction = position - base
    size = int(np.prod(grid.MNI_SHAPE))
    sums = np.zeros((size, data.shape[1]))
    weight = np.zeros(size)
    for corner in np.ndindex(2, 2, 2):
        index = base + corner
        w = np.prod(np.where(corner, fraction, 1.0 - fraction), axis=1)
        ok = ((index >= 0) & (index < grid.MNI_SHAPE)).all(axis=1)
        flat = np.ravel_multi_index(index[ok].T, grid.MNI_SHAPE)
        weight += np.bincount(flat, w[ok], size)
        for k in range(data.shape[1]):
            sums[:, k] += np.bincount(flat, w[ok] * data[ok, k], size)
    return sums.reshape(*grid.MNI_SHAPE, data.shape[1]), weight.reshape(grid.MNI_SHAPE)


def warped_maps(tissues: np.ndarray, coordinates: np.ndarray, native_voxel_mm3: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unmodulated and modulated maps of ``tissues`` (X, Y, Z, K, probabilities on the native
    grid of voxel volume ``native_voxel_mm3``) on the MNI grid, and the volume density (native
    mm^3 per MNI mm^3, the Jacobian determinant of the mapping as the push sees it). Arrays
    (121, 145, 121, K), (121, 145, 121, K) and (121, 145, 121), float32."""
    sums, weight = push(tissues, coordinates)
    reached = weight > 1e-3
    smooth_weight = ndimage.gaussian_filter(weight, 1.0)
    unmodulated = np.empty_like(sums)
    for k in range(sums.shape[-1]):
        filled = ndimage.gaussian_filter(sums[..., k], 1.0) / np.maximum(smooth_weight, 1e-6)
        unmodulated[..., k] = np.where(reached, sums[..., k] / np.maximum(weight, 1e-3), np.where(smooth_weight > 1e-3, filled, 0.0))
    scale = native_voxel_mm3 / grid.MNI_VOXEL_MM3
    return unmodulated.clip(0.0, 1.0).astype(np.float32), (sums * scale).astype(np.float32), (weight * scale).astype(np.float32)
