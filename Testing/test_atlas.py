"""Shipped resources: the AAL atlas (with the hippocampal regions) on the MNI grid and the sample T1."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.core.resources import resources_dir
from BrainImageNetADLib.explain.atlas import NAMES_FILE, REGIONS, build_atlas, hippocampal_labels, region_names

#: MRIcron's AAL atlas as Debian's mricron-data installs it (a test-only system package).
MRICRON_AAL = Path("/usr/share/mricron/templates/aal.nii.gz")


def test_shipped_atlas_is_reproduced_by_the_project_code(tmp_path: Path) -> None:
    rebuilt = np.asanyarray(nib.load(str(build_atlas(tmp_path, MRICRON_AAL))).dataobj)
    np.testing.assert_array_equal(rebuilt, templates.aal_labels())
    assert (tmp_path / NAMES_FILE).read_text() == (resources_dir() / "Atlas" / NAMES_FILE).read_text()
    names = region_names()
    assert len(names) == 116 and all(names[k] == v for k, v in REGIONS.items())
    assert set(np.unique(templates.aal_labels())) == {0, *names}


def test_regions_have_plausible_volumes_and_sides() -> None:
    labels = hippocampal_labels()
    assert labels.shape == grid.MNI_SHAPE and set(np.unique(labels)) == {0, *REGIONS}
    for value, name in REGIONS.items():
        voxels = np.argwhere(labels == value)
        volume_ml = len(voxels) * 1.5**3 / 1000
        assert 4.0 < volume_ml < 15.0, (name, volume_ml)
        centre = grid.MNI_AFFINE[:3, :3] @ voxels.mean(axis=0) + grid.MNI_AFFINE[:3, 3]
        assert (centre[0] < 0) == name.endswith("_L"), (name, centre)  # RAS: left is x < 0
        assert -45 < centre[1] < 0 and -30 < centre[2] < 5, (name, centre)  # medial temporal lobe
    # All four regions lie inside the cropped model grid.
    assert (grid.crop_to_model_grid(labels) > 0).sum() == (labels > 0).sum()


def test_sample_t1_is_the_colin27_scan_unchanged() -> None:
    from BrainImageNetADLib.core.resources import sample_t1

    assert sample_t1().read_bytes() == Path("/usr/share/mricron/templates/ch2.nii.gz").read_bytes()
