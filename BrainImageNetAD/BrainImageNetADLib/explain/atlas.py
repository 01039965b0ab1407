"""AAL atlas labels on the MNI grid, the hippocampal regions, and their mapping to native space.

Labels come from the AAL atlas (``aal.nii.gz`` and ``aal.nii.txt`` as MRIcron distributes them,
BSD-3-Clause); ``build_atlas`` resamples all 116 regions to the 121x145x121 MNI 1.5 mm grid and
the result is shipped in ``Resources/Atlas`` with its label names (see ``Resources/PROVENANCE.md``),
so that nothing outside the extension is read at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np

from ..core import grid, templates
from ..core.atomic import write_bytes_atomic, write_nifti_atomic
from ..core.resources import resources_dir

#: The hippocampal regions: label value -> name (values as in AAL).
REGIONS: dict[int, str] = {**templates.AAL_HIPPOCAMPI, 39: "ParaHippocampal_L", 40: "ParaHippocampal_R"}
NAMES_FILE = "aal_labels.tsv"


def build_atlas(out_dir: str | Path, source: str | Path) -> Path:
    """Write every AAL region of ``source`` (MRIcron's ``aal.nii.gz``, its names in ``aal.nii.txt``
    beside it), nearest-neighbour resampled onto the 121x145x121 MNI grid (uint8 labels, 0
    elsewhere), as ``templates.AAL_FILE`` and the label names as ``NAMES_FILE`` (label, name) into
    ``out_dir``. Returns the atlas path."""
    source = Path(source)
    names_source = source.with_suffix("").with_suffix(".nii.txt")
    if not source.is_file() or not names_source.is_file():
        raise FileNotFoundError(f"{source} or {names_source.name} is missing (MRIcron's AAL atlas: aal.nii.gz with aal.nii.txt)")
    out_dir = Path(out_dir)
    image = nib.load(str(source))
    labels = grid.resample_to_mni_grid(np.asanyarray(image.dataobj).astype(np.uint8), image.affine, order=0).astype(np.uint8)
    rows = ["label\tname"]
    for line in names_source.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            rows.append(f"{int(parts[0])}\t{parts[1]}")
    write_bytes_atomic(out_dir / NAMES_FILE, ("\n".join(rows) + "\n").encode())
    return write_nifti_atomic(out_dir / templates.AAL_FILE, labels, grid.MNI_AFFINE, "AAL labels 1-116 on the MNI 1.5 mm grid")


def hippocampal_labels() -> np.ndarray:
    """``templates.aal_labels`` restricted to ``REGIONS`` (other voxels 0)."""
    labels = templates.aal_labels()
    return np.where(np.isin(labels, list(REGIONS)), labels, 0).astype(np.uint8)


def region_names() -> dict[int, str]:
    """Label value -> AAL region name."""
    lines = (resources_dir() / "Atlas" / NAMES_FILE).read_text(encoding="utf-8").splitlines()[1:]
    return {int(value): name for value, name in (line.split("\t") for line in lines if line)}


def region_mask(names: Iterable[str]) -> np.ndarray:
    """The AAL regions called ``names`` on the 121x145x121 MNI grid: bool. A name without its side
    suffix (``Precuneus``) stands for both sides (``Precuneus_L``, ``Precuneus_R``)."""
    wanted = set(names)
    chosen = [label for label, name in region_names().items() if name in wanted or name.rsplit("_", 1)[0] in wanted]
    return np.isin(templates.aal_labels(), chosen)


def write_mni_regions(path: str | Path) -> Path:
    """Write the hippocampal and parahippocampal labels (``REGIONS``) on the 121x145x121 MNI grid
    as a uint8 NIfTI label map, atomically (the regions of a case given as MNI maps)."""
    return write_nifti_atomic(path, hippocampal_labels(), grid.MNI_AFFINE, "hippocampal regions (AAL) on the MNI 1.5 mm grid")


def write_native_regions(preprocessing_dir: str | Path, path: str | Path) -> Path:
    """Write the hippocampal and parahippocampal labels (``REGIONS``) on the patient's native T1
    grid (through the transforms kept by preprocessing) as a uint8 NIfTI label map, atomically."""
    from ..preprocessing.transforms import write_native

    return write_native(hippocampal_labels(), preprocessing_dir, path, labels=True)
