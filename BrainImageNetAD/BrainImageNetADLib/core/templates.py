"""Templates used by preprocessing: shipped with the extension or inside Python packages that its
installer installs (nothing downloaded, nothing read from the operating system's folders).

- MNI ICBM152 2009a symmetric T1 and grey/white-matter probability maps, shipped inside the PyPI
  package ``nilearn`` (copyright McConnell Brain Imaging Centre; free use with attribution).
- Colin27 T1 with skull, shipped as the sample case (``Resources/Sample/colin27_t1.nii.gz``,
  BSD-3-Clause, see ``Resources/PROVENANCE.md``): the head template of the first, skull-to-skull
  affine step.
- SPM12's tissue probability maps (``tpm/TPM.nii``: GM, WM, CSF, bone, soft tissue, air on the
  121x145x121 1.5 mm MNI grid; GPL-2.0, Wellcome Centre for Human Neuroimaging), read from the
  PyPI package ``spm-runtime`` (installed without its MATLAB runtime dependency, which is not
  used): its ``_spm.ctf`` is a zip archive that holds SPM's ``tpm`` folder unencrypted. They are
  the priors of the segmentation, as in SPM's own Segment.
"""

from __future__ import annotations

import zipfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from . import grid
from .resources import resources_dir, sample_t1

#: The shipped AAL labels on the MNI grid (``explain.atlas.build_atlas`` writes it).
AAL_FILE = "aal_mni1.5mm.nii.gz"
#: The AAL hippocampi: label value -> name.
AAL_HIPPOCAMPI: dict[int, str] = {37: "Hippocampus_L", 38: "Hippocampus_R"}


def _nilearn_data(name: str) -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / name


MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


def template_path(name: str) -> Path:
    """Path of a template file; raises FileNotFoundError with the package to install."""
    if name == "colin27_head":
        path = sample_t1()
        hint = "the extension's Resources/Sample folder is incomplete: reinstall the extension"
    else:
        path = _nilearn_data(name)
        hint = "install the Python package nilearn (requirements/pinned.txt)"
    if not path.is_file():
        raise FileNotFoundError(f"template {path} is missing: {hint}")
    return path


def mni_grid_reference():
    """An empty ANTs image on the 121x145x121 MNI 1.5 mm grid (SPM's), in ANTs' LPS convention."""

    return ants_from_ras(np.zeros(grid.MNI_SHAPE, dtype=np.float32), grid.MNI_AFFINE)


def ants_from_ras(data: np.ndarray, affine: np.ndarray):
    """Make an ANTs image from a voxel array (I, J, K) and its voxel-to-RAS affine (mm)."""
    import ants

    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    direction = lps / spacing
    origin = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32), origin=origin.tolist(), spacing=spacing.tolist(), direction=direction
    )


def ras_affine(image) -> np.ndarray:
    """Voxel-to-RAS affine (4x4, mm) of an ANTs image."""
    lps = np.asarray(image.direction) * np.asarray(image.spacing)[None, :]
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ lps
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(image.origin)
    return affine


@lru_cache(maxsize=4)
def mni_templates_on_grid() -> dict[str, np.ndarray]:
    """MNI152 T1 (0-1), GM, WM and CSF prior probabilities and the brain mask, resampled to the
    121x145x121 MNI grid: arrays (121, 145, 121) float32 in MNI voxel order."""
    import ants

    reference = mni_grid_reference()
    out: dict[str, np.ndarray] = {}
    for key, name in (("T1", MNI_T1), ("GM", MNI_GM), ("WM", MNI_WM)):
        image = ants.image_read(str(template_path(name)))
        # The files hold uint8 values 0-255: rescale to intensities and probabilities in [0, 1].
        out[key] = ants.resample_image_to_target(image, reference, interp_type="linear").numpy().astype(np.float32) / 255.0
    brain = np.clip(out["GM"] + out["WM"], 0, 1)
    mask = (out["T1"] > 0.05) | (brain > 0.1)
    out["CSF"] = np.where(mask, np.clip(1.0 - brain, 0.0, 1.0), 0.0).astype(np.float32)
    out["mask"] = mask.astype(np.float32)
    return out


SPM_RUNTIME = "spm-runtime"
_SPM_ARCHIVE = "spm_runtime/_spm/_spm.ctf"
_TPM_MEMBER = "fsroot/_spm/cleaned/spm/tpm/TPM.nii"


@lru_cache(maxsize=1)
def spm_tissue_priors() -> np.ndarray:
    """SPM12's six tissue probability maps on the 121x145x121 MNI grid: float32 array
    (121, 145, 121, 6) in MNI voxel order, classes GM, WM, CSF, bone, soft tissue, air, summing
    to 1 at each voxel. Raises FileNotFoundError naming the package when it is missing."""
    import nibabel as nib

    hint = f"install the Python package {SPM_RUNTIME} without dependencies (scripts/setup.sh does)"
    try:
        archive = Path(str(metadata.distribution(SPM_RUNTIME).locate_file(_SPM_ARCHIVE)))
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(f"SPM12's tissue priors are missing: {hint}") from error
    if not archive.is_file():
        raise FileNotFoundError(f"{archive} is missing: {hint}")
    with zipfile.ZipFile(archive) as ctf:
        image = nib.Nifti1Image.from_bytes(ctf.read(_TPM_MEMBER))
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.shape != (*grid.MNI_SHAPE, 6) or not np.allclose(image.affine, grid.MNI_AFFINE, atol=1e-3):
        raise ValueError(f"{archive}: TPM.nii is not on the 121x145x121 1.5 mm MNI grid")
    return data


def aal_labels() -> np.ndarray:
    """The shipped AAL labels on the MNI grid: uint8 array (121, 145, 121) in MNI voxel order."""
    import nibabel as nib

    image = nib.load(str(resources_dir() / "Atlas" / AAL_FILE))
    return np.asanyarray(image.dataobj).astype(np.uint8)
