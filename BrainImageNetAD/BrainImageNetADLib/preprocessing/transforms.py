"""Moving maps between the MNI grids (121x145x121 or the 96x120x86 model grid) and a patient's
native T1 grid, with the transform a preprocessing folder keeps (``transforms/``: the affine
that takes MNI points to native points, ANTs format, the displacement that the segmentation
added to it, ``native_warp.nii.gz``, its first-order inverse, ``native_warp_inverse.nii.gz``, and
the native grid; see ``preprocess``). Folders written before a displacement was kept hold the
affine alone, and then it alone is used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core import grid, templates
from ..core.errors import InputError


def _transforms_dir(preprocessing_dir: str | Path) -> Path:
    folder = Path(preprocessing_dir) / "transforms"
    needed = ("mni_to_native_affine.mat", "native_grid.json")
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise InputError(f"{folder}: not a finished preprocessing folder (missing {', '.join(missing)})")
    return folder


def _kept(folder: Path, name: str) -> list[str]:
    """``[path]`` of a displacement file in ``folder``, or ``[]`` where the folder predates it."""
    return [str(folder / name)] if (folder / name).is_file() else []


def native_reference(preprocessing_dir: str | Path):
    """An empty ANTs image on the patient's native T1 grid recorded by preprocessing."""
    import ants

    info = json.loads((_transforms_dir(preprocessing_dir) / "native_grid.json").read_text(encoding="utf-8"))
    return ants.from_numpy(
        np.zeros(info["size"], dtype=np.float32), origin=info["origin"], spacing=info["spacing"], direction=np.array(info["direction"])
    )


def mni_to_native(data: np.ndarray, preprocessing_dir: str | Path, interpolator: str = "linear"):
    """Resample a map on the MNI grid (121x145x121) or the model grid (96x120x86), in MNI voxel
    order, onto the native T1 grid; returns an ANTs image in native space.

    ``interpolator``: ``linear`` for continuous maps (heat maps), ``genericLabel`` for labels.
    """
    import ants

    if data.shape == grid.MODEL_SHAPE:
        data = grid.uncrop_to_mni_grid(data.astype(np.float32))
    if data.shape != grid.MNI_SHAPE:
        raise InputError(f"expected a map of shape {grid.MNI_SHAPE} or {grid.MODEL_SHAPE}, got {data.shape}")
    folder = _transforms_dir(preprocessing_dir)
    moving = templates.ants_from_ras(data.astype(np.float32), grid.MNI_AFFINE)
    warp = _kept(folder, "native_warp.nii.gz")
    return ants.apply_transforms(
        native_reference(preprocessing_dir),
        moving,
        [str(folder / "mni_to_native_affine.mat"), *warp],
        whichtoinvert=[True] + [False] * len(warp),
        interpolator=interpolator,
    )


def native_to_mni(image, preprocessing_dir: str | Path, interpolator: str = "linear") -> np.ndarray:
    """Resample an ANTs image in the patient's native space onto the 121x145x121 MNI grid, through
    the affine and the displacement's first-order inverse (where MNI points the GM maps hold);
    returns an array (121, 145, 121) in MNI voxel order."""
    import ants

    folder = _transforms_dir(preprocessing_dir)
    return ants.apply_transforms(
        templates.mni_grid_reference(),
        image,
        [*_kept(folder, "native_warp_inverse.nii.gz"), str(folder / "mni_to_native_affine.mat")],
        interpolator=interpolator,
    ).numpy()


def affine_matrix(transform_file: str) -> np.ndarray:
    """The 4x4 matrix (LPS mm) of an ANTs affine file: y = A (x - c) + c + t."""
    import ants

    transform = ants.read_transform(transform_file)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(transform.parameters[:9]).reshape(3, 3)
    center = np.array(transform.fixed_parameters)
    matrix[:3, 3] = np.array(transform.parameters[9:12]) + center - matrix[:3, :3] @ center
    return matrix


def native_points_to_mni(points_ras: np.ndarray, preprocessing_dir: str | Path, displacement: bool = True) -> np.ndarray:
    """Where the segmentation placed native points: ``points_ras`` (N, 3, native world mm, RAS)
    to MNI world mm (RAS, (N, 3)) through the kept affine and displacement, x -> A^-1 (x + w(x))
    in ITK's LPS space (the displacement interpolated trilinearly on its lattice); through the
    affine alone when ``displacement`` is False."""
    import ants
    from scipy import ndimage

    folder = _transforms_dir(preprocessing_dir)
    flip = np.array([-1.0, -1.0, 1.0])
    lps = np.asarray(points_ras, dtype=np.float64) * flip
    moved = lps
    if displacement and _kept(folder, "native_warp.nii.gz"):
        warp = ants.image_read(str(folder / "native_warp.nii.gz"))
        index = (lps - np.asarray(warp.origin)) @ np.linalg.inv(np.asarray(warp.direction) @ np.diag(warp.spacing)).T
        field = warp.numpy()
        moved = lps + np.stack([ndimage.map_coordinates(field[..., a], index.T, order=1, mode="nearest") for a in range(3)], axis=1)
    inverse = np.linalg.inv(affine_matrix(str(folder / "mni_to_native_affine.mat")))
    return (moved @ inverse[:3, :3].T + inverse[:3, 3]) * flip


def write_native(data: np.ndarray, preprocessing_dir: str | Path, path: str | Path, labels: bool = False, fill: float = 0.0) -> Path:
    """Write a map on the model grid (96, 120, 86) or the MNI grid (121, 145, 121) onto the
    patient's native T1 grid as a NIfTI file, atomically. ``labels``: nearest-label interpolation
    and an unsigned 8-bit label map; otherwise linear interpolation and float32, with ``fill``
    where the map has no value (outside its grid)."""
    from ..core.atomic import write_nifti_atomic

    if labels:
        image = mni_to_native(data, preprocessing_dir, interpolator="genericLabel")
        values = np.rint(image.numpy()).astype(np.uint8)
    else:  # linear interpolation commutes with the shift, and ANTs pads with 0
        image = mni_to_native(np.asarray(data, np.float32) - np.float32(fill), preprocessing_dir)
        values = image.numpy().astype(np.float32) + np.float32(fill)
    return write_nifti_atomic(path, values, templates.ras_affine(image), "native T1 grid")
