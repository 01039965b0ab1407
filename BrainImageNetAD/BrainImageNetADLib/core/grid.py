"""The model grid: MNI152 space at 1.5 mm, as SPM/DARTEL writes it, cropped as in the paper.

Arrays in this module are indexed (i, j, k) = voxel order of the NIfTI file (x fastest in the
file, first index here); affines map voxel indices to RAS world coordinates in mm.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: Shape (i, j, k) of SPM's 1.5 mm MNI grid, bounding box [-90 -126 -72; 90 90 108] mm.
MNI_SHAPE: tuple[int, int, int] = (121, 145, 121)
#: Voxel-to-RAS affine of that grid (SPM convention: i runs from right (+90) to left).
MNI_AFFINE: np.ndarray = np.array(
    [
        [-1.5, 0.0, 0.0, 90.0],
        [0.0, 1.5, 0.0, -126.0],
        [0.0, 0.0, 1.5, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
#: Volume of one voxel of that grid (mm^3).
MNI_VOXEL_MM3: float = 1.5**3
#: Crop of the MNI grid that the networks see: [12:108, 13:133, 16:102] (paper, authors' code).
CROP_START: tuple[int, int, int] = (12, 13, 16)
#: Shape (i, j, k) of the model grid.
MODEL_SHAPE: tuple[int, int, int] = (96, 120, 86)
#: Voxel-to-RAS affine of the model grid.
MODEL_AFFINE: np.ndarray = MNI_AFFINE.copy()
MODEL_AFFINE[:3, 3] = MNI_AFFINE[:3, :3] @ np.array(CROP_START, dtype=float) + MNI_AFFINE[:3, 3]

_AFFINE_TOLERANCE_MM = 0.05


def crop_to_model_grid(mni_data: np.ndarray) -> np.ndarray:
    """Crop an array on the 121x145x121 MNI grid to the 96x120x86 model grid (voxel indices)."""
    if mni_data.shape[:3] != MNI_SHAPE:
        raise InputError(f"expected an array of shape {MNI_SHAPE}, got {mni_data.shape}")
    i, j, k = CROP_START
    di, dj, dk = MODEL_SHAPE
    return mni_data[i : i + di, j : j + dj, k : k + dk]


def uncrop_to_mni_grid(model_data: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Place a 96x120x86 model-grid array back into the 121x145x121 MNI grid, padding with ``fill``."""
    if model_data.shape[:3] != MODEL_SHAPE:
        raise InputError(f"expected an array of shape {MODEL_SHAPE}, got {model_data.shape}")
    out = np.full(MNI_SHAPE + model_data.shape[3:], fill, dtype=model_data.dtype)
    i, j, k = CROP_START
    di, dj, dk = MODEL_SHAPE
    out[i : i + di, j : j + dj, k : k + dk] = model_data
    return out


def _axis_reordering(affine: np.ndarray, reference: np.ndarray) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """Find the permutation and flips that turn ``affine``'s voxel axes into ``reference``'s.

    Returns ``(order, flips)`` such that ``data.transpose(order)`` then flipping the axes marked
    in ``flips`` gives the array in the reference voxel order, or None when the affine is not a
    permuted/flipped copy of the reference's linear part.
    """
    linear, ref_linear = affine[:3, :3], reference[:3, :3]
    order: list[int] = []
    flips: list[bool] = []
    for ref_axis in range(3):
        column = ref_linear[:, ref_axis]
        for axis in range(3):
            if np.allclose(linear[:, axis], column, atol=1e-3):
                order.append(axis)
                flips.append(False)
                break
            if np.allclose(linear[:, axis], -column, atol=1e-3):
                order.append(axis)
                flips.append(True)
                break
        else:
            return None
    if sorted(order) != [0, 1, 2]:
        return None
    return tuple(order), tuple(flips)


def to_model_grid(data: np.ndarray, affine: np.ndarray, name: str = "image") -> np.ndarray:
    """Bring a 3D map that lies on the MNI 1.5 mm grid (full or cropped) onto the model grid.

    ``data`` has shape (I, J, K) in file voxel order and ``affine`` maps its voxels to RAS mm.
    Accepted: the 121x145x121 SPM grid (cropped here as the paper does) or the 96x120x86 model
    grid, each in any axis order or direction (reordered exactly, no interpolation). Returns a
    float32 array of shape (96, 120, 86) in model voxel order. Raises InputError otherwise.
    """
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: expected a 3D map, got an array of {data.ndim} dimensions {data.shape}")
    affine = np.asarray(affine, dtype=float)
    for reference, shape, label in ((MNI_AFFINE, MNI_SHAPE, "121x145x121 MNI"), (MODEL_AFFINE, MODEL_SHAPE, "96x120x86 model")):
        reordering = _axis_reordering(affine, reference)
        if reordering is None:
            continue
        order, flips = reordering
        if tuple(data.shape[a] for a in order) != shape:
            continue
        reordered = data.transpose(order)
        for axis, flip in enumerate(flips):
            if flip:
                reordered = np.flip(reordered, axis=axis)
        # The world position of the reference grid's first voxel must match.
        corner = np.zeros(3)
        for axis, flip in enumerate(flips):
            if flip:
                corner[order[axis]] = data.shape[order[axis]] - 1
        world_origin = affine[:3, :3] @ corner + affine[:3, 3]
        if not np.allclose(world_origin, reference[:3, 3], atol=_AFFINE_TOLERANCE_MM):
            raise InputError(
                f"{name}: the {label} grid is shifted by "
                f"{np.round(world_origin - reference[:3, 3], 2).tolist()} mm from the expected MNI position; "
                "was it written by another normalisation pipeline?"
            )
        grid = np.ascontiguousarray(reordered, dtype=np.float32)
        return crop_to_model_grid(grid) if shape == MNI_SHAPE else grid
    voxel_sizes = np.round(np.linalg.norm(affine[:3, :3], axis=0), 3).tolist()
    raise InputError(
        f"{name}: not on the model grid: shape {tuple(data.shape)}, voxel size {voxel_sizes} mm; "
        "expected the 1.5 mm MNI grid 121x145x121 (SPM/DARTEL) or the cropped 96x120x86 grid"
    )


def resample_to_mni_grid(data: np.ndarray, affine: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample a 3D array (voxel order of ``affine``, voxel-to-RAS mm) onto the 121x145x121 MNI
    grid: ``order`` 1 = trilinear (maps), 0 = nearest neighbour (labels). Outside the source: 0."""
    from scipy import ndimage

    ijk = np.indices(MNI_SHAPE).reshape(3, -1).astype(float)
    world = MNI_AFFINE[:3, :3] @ ijk + MNI_AFFINE[:3, 3:4]
    inverse = np.linalg.inv(affine)
    source = inverse[:3, :3] @ world + inverse[:3, 3:4]
    values = ndimage.map_coordinates(data, source, order=order, mode="constant", cval=0.0)
    return values.reshape(MNI_SHAPE).astype(np.float32 if order else data.dtype)
