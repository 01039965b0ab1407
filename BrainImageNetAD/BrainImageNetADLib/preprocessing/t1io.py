"""Reading a T1-weighted image (NIfTI, NRRD, MHA, or a DICOM series folder) and refusing what
cannot be one, with a specific message for each case.

Images are returned as ANTs images in their native space (physical coordinates in ITK's LPS
convention, as ANTs uses them); nothing is resampled here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.imageheader import check_image_header, read_nifti
from .sequence import metadata_kind, read_sequence_info

#: Voxel sizes outside this range (mm) are refused: no brain MRI is acquired like that.
VOXEL_SIZE_LIMITS_MM = (0.2, 8.0)
#: Voxel sizes above this (mm) are accepted with a QC warning: VBM needs near-isotropic 1 mm data.
VOXEL_SIZE_WARN_MM = 2.0
#: Slices thicker than this (mm) are a 2D clinical acquisition: grey-matter maps from them are not
#: comparable with those of 3D T1 scans, so QC fails (``--force`` still predicts).
THICK_SLICE_FAIL_MM = 4.0
#: Share of voxels at or below -500 above which an image is a CT in Hounsfield units (air is -1000;
#: MRI intensities are not negative).
CT_AIR_FRACTION = 0.05
#: Field of view below this (mm) on any axis cannot hold a whole brain.
MIN_FIELD_OF_VIEW_MM = 100.0
#: Share of neighbouring foreground voxels with identical values above which an image with few
#: integer values is a label map (T1 scans measured here: 0.09-0.23; atlases: 0.92).
LABEL_PLATEAU_FRACTION = 0.6


@dataclass
class T1Image:
    """A validated T1 volume: the ANTs image (float32, native space) and what was checked."""

    image: Any
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _read_sitk(path: Path):
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # failures are reported as InputError instead
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            sizes = {s: len(reader.GetGDCMSeriesFileNames(str(path), s)) for s in series}
            raise InputError(
                f"{path}: folder holds {len(series)} DICOM series ({', '.join(f'{s}: {n} files' for s, n in sizes.items())}); put the T1 series in a folder of its own"
            )
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def _read_nifti(path: Path):
    """NIfTI through ``imageheader.read_nifti`` (every byte read, NaNs kept), as a SimpleITK image
    in LPS physical space."""
    import SimpleITK as sitk

    data, affine = read_nifti(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise _dimension_error(path.name, list(data.shape))
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.T))
    out.SetSpacing(spacing.tolist())
    out.SetDirection((lps / np.where(spacing > 0, spacing, 1)).ravel().tolist())
    out.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]).tolist())
    return out


def read_t1(path: str | Path) -> T1Image:
    """Read and validate a T1-weighted volume.

    Raises InputError for: a missing, unreadable, corrupt or truncated file; a header that claims
    more voxels than ``imageheader.MAX_VOXELS`` or more data than the file holds; a 2D image; a 4D
    series (names how many volumes); a colour image; NaN/Inf voxels; an empty or constant image;
    a label map; voxel sizes outside ``VOXEL_SIZE_LIMITS_MM``; a field of view too small for a
    brain. Returns the image as float32 in native space with its size, spacing, acquisition
    metadata (``sequence``), warnings and failures (thick slices; metadata naming another
    contrast, ``sequence.metadata_kind``).
    """
    import ants
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    check_image_header(path)
    try:
        image = _read_sitk(path)
    except InputError:
        raise
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path.name}: cannot read it as an image (NIfTI, NRRD, MHA or DICOM): {reason[:200]}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path.name}: a colour or vector image ({image.GetNumberOfComponentsPerPixel()} components per voxel), not a T1 scan"
        )
    size = list(image.GetSize())
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        size = size[:3]
    if image.GetDimension() != 3 or min(size) < 8:
        raise _dimension_error(path.name, size)
    spacing = np.array(image.GetSpacing(), dtype=float)
    lo, hi = VOXEL_SIZE_LIMITS_MM
    if spacing.min() < lo or spacing.max() > hi:
        raise InputError(f"{path.name}: voxel size {np.round(spacing, 3).tolist()} mm is outside {lo}-{hi} mm; is the header correct?")
    field_of_view = spacing * np.array(size)
    if field_of_view.min() < MIN_FIELD_OF_VIEW_MM:
        raise InputError(f"{path.name}: field of view {np.round(field_of_view).tolist()} mm is too small to hold a whole brain")
    data = sitk.GetArrayFromImage(image).astype(np.float32).T  # (x, y, z), ITK index order
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(f"{path.name}: {int((~finite).sum())} voxels are NaN or infinite")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path.name}: the image is constant ({float(data.min())}); it holds no anatomy")
    _refuse_label_map(data, path.name)
    air = float((data <= -500).mean())
    if air > CT_AIR_FRACTION:
        raise InputError(
            f"{path.name}: looks like a CT, not a T1 MRI ({100 * air:.0f}% of voxels at or below -500, as air is in Hounsfield units)"
        )
    warnings, failures = [], []
    if spacing.max() > THICK_SLICE_FAIL_MM:
        failures.append(
            f"slice thickness {spacing.max():.1f} mm (voxels {np.round(spacing, 2).tolist()} mm): a 2D clinical acquisition; "
            f"grey-matter maps need a 3D T1 with slices of {THICK_SLICE_FAIL_MM:g} mm or less"
        )
    elif spacing.max() > VOXEL_SIZE_WARN_MM:
        warnings.append(f"coarse voxels {np.round(spacing, 2).tolist()} mm: grey-matter maps will be blurred (1 mm isotropic recommended)")
    sequence = read_sequence_info(path)
    kind = metadata_kind(sequence)
    if kind:
        failures.append(f"the scan's metadata says it is not a T1: it looks like {kind}")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ants_image = ants.from_numpy(np.ascontiguousarray(data), origin=list(image.GetOrigin()), spacing=spacing.tolist(), direction=direction)
    info = {
        "file": path.name,
        "size": size,
        "voxel_size_mm": np.round(spacing, 4).tolist(),
        "field_of_view_mm": np.round(field_of_view, 1).tolist(),
        **({"sequence": sequence} if sequence["source"] else {}),
    }
    return T1Image(ants_image, info, warnings, failures)


def _dimension_error(name: str, size: list[int]) -> InputError:
    if len(size) == 4:
        return InputError(f"{name}: a 4D series with {size[3]} volumes; extract the T1 volume you want (e.g. volume 0) into a 3D file")
    if len(size) == 3:
        return InputError(f"{name}: a 2D image or a thin slab (size {size}); a 3D T1 volume of the whole head is needed")
    return InputError(f"{name}: a {len(size)}D image or a thin slab (size {size}); a 3D T1 volume of the whole head is needed")


def _refuse_label_map(data: np.ndarray, name: str) -> None:
    foreground = data > 0
    values = np.unique(data[foreground]) if foreground.any() else np.array([])
    if values.size == 0 or values.size > 1000 or not np.all(values == np.round(values)):
        return
    same = (data[1:] == data[:-1]) & foreground[1:]
    plateau = float(same.sum()) / max(int(foreground[1:].sum()), 1)
    if plateau > LABEL_PLATEAU_FRACTION:
        raise InputError(f"{name}: looks like a label map or segmentation ({values.size} distinct values in flat regions), not a T1 scan")
