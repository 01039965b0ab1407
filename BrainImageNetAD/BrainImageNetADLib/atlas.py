"""Hippocampus and parahippocampal gyrus labels on the MNI grid, and on a patient's native grid.

Labels come from the AAL atlas shipped in Debian's ``mricron-data`` (BSD-3-Clause per its
copyright file); ``build_atlas`` resamples them to the 121x145x121 MNI 1.5 mm grid and the result
is shipped in ``Resources/Atlas`` (see ``Resources/PROVENANCE.md``).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from . import grid
from .atomic import write_nifti_atomic
from .resources import resources_dir

AAL_SOURCE = Path("/usr/share/mricron/templates/aal.nii.gz")
#: Label value -> name on the shipped atlas (values as in AAL).
REGIONS: dict[int, str] = {37: "Hippocampus_L", 38: "Hippocampus_R", 39: "ParaHippocampal_L", 40: "ParaHippocampal_R"}
ATLAS_FILE = "aal_hippocampus_mni1.5mm.nii.gz"


def build_atlas(out_path: str | Path, source: Path = AAL_SOURCE) -> Path:
    """Write the four regions of ``REGIONS`` from AAL, nearest-neighbour resampled onto the
    121x145x121 MNI grid (uint8 labels, 0 elsewhere), to ``out_path``."""
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: install Debian's mricron-data")
    image = nib.load(str(source))
    labels = grid.resample_to_mni_grid(np.asanyarray(image.dataobj).astype(np.uint8), image.affine, order=0)
    labels = np.where(np.isin(labels, list(REGIONS)), labels, 0).astype(np.uint8)
    return write_nifti_atomic(out_path, labels, grid.MNI_AFFINE, "AAL hippocampus/parahippocampal labels 37-40")


def load_atlas() -> np.ndarray:
    """The shipped labels on the MNI grid: uint8 array (121, 145, 121) in MNI voxel order."""
    image = nib.load(str(resources_dir() / "Atlas" / ATLAS_FILE))
    return np.asanyarray(image.dataobj).astype(np.uint8)


def atlas_to_native(preprocessing_dir: str | Path):
    """The labels mapped onto the patient's native T1 grid (ANTs image of label values)."""
    from .transforms import mni_to_native

    return mni_to_native(load_atlas().astype(np.float32), preprocessing_dir, interpolator="genericLabel")
