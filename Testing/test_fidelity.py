"""The measures of agreement with SPM12's maps, on SPM12's own reference maps (``../shared``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from BrainImageNetADLib.core.errors import InputError
from BrainImageNetBench.fidelity import (
    ReferenceScan,
    _on_mni_grid,
    dice,
    map_agreement,
    preprocessed_agreement,
    reference_fit,
    reference_scans,
    summary_line,
)
from conftest import ROOT

REFERENCE = ROOT.parent / "shared" / "reference" / "spm12"
pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="the SPM12 reference maps (../shared/reference/spm12) are not beside this checkout"
)


def _reference(name: str) -> ReferenceScan:
    """The shared reference folder's scan ``name``."""
    return next(s for s in reference_scans(REFERENCE) if s.name == name)


def test_reference_folder_is_read() -> None:
    scans = {s.name: s for s in reference_scans(REFERENCE)}
    assert "colin27" in scans and len(scans) >= 5
    assert all(s.source.exists() for s in scans.values())
    assert scans["colin27"].wc1.name == "wc1colin27.nii.gz" and scans["colin27"].c1.name == "c1colin27.nii.gz"


def test_measures_on_spm_maps() -> None:
    scan = _reference("colin27")
    wc1, mwc1 = _on_mni_grid(scan.wc1, "wc1"), _on_mni_grid(scan.mwc1, "mwc1")
    same = map_agreement(wc1, mwc1, wc1, mwc1)
    assert same["gmd_r"] == pytest.approx(1.0) and same["gmv_r_4mm"] == pytest.approx(1.0)
    assert same["gm_volume_ratio"] == pytest.approx(1.0) and 900 < same["spm_gm_ml"] < 1150  # SPM's Colin27: 1032 mL
    # A map one voxel (1.5 mm) off: the thin cortical ribbon makes the voxelwise agreement drop to
    # about 0.69, the 4 mm-smoothed one to about 0.91; 10% more volume shows in the ratio.
    shifted = map_agreement(np.roll(wc1, 1, axis=1), np.roll(mwc1, 1, axis=1) * 1.1, wc1, mwc1)
    assert shifted["gmd_r"] < 0.8 < shifted["gmd_r_4mm"] < 1.0
    assert shifted["gm_volume_ratio"] == pytest.approx(1.1)
    mask = wc1 > 0.5
    assert dice(mask, mask) == 1.0 and dice(mask, np.roll(mask, 2, axis=0)) < 0.9
    line = summary_line([{**shifted, "dice_native": 0.8}, {**same, "dice_native": 0.9}])
    assert line.startswith("fidelity vs SPM12 (2 scans, lowest): GMD r ") and "GM volume 1.00-1.10, Dice 0.80" in line


def _seg8(path: Path, twarp: np.ndarray, ll: float) -> Path:
    """A parameter file as SPM's Segment saves it (MATLAB format 5, ``-v6``), with what the check reads."""
    savemat(str(path), {"Twarp": twarp.astype(np.float32), "ll": ll, "Affine": np.eye(4)}, format="5")
    return path


def test_spm_fits_that_failed_are_recognised_and_left_out(tmp_path: Path) -> None:
    lattice = np.zeros((6, 7, 6, 3))
    assert reference_fit(None) == "unchecked"
    assert reference_fit(_seg8(tmp_path / "a_seg8.mat", lattice + 0.5, -6.3e5)) == "ok"
    # Colin27's run: the displacement's first step came back NaN everywhere, and so did ll.
    failed = reference_fit(_seg8(tmp_path / "b_seg8.mat", lattice * np.nan, np.nan))
    assert failed.startswith("failed: displacement not finite in 100%")
    assert reference_fit(_seg8(tmp_path / "c_seg8.mat", lattice, np.nan)) == "failed: log-likelihood not finite"
    (tmp_path / "d_seg8.mat").write_text("not a MATLAB file")
    with pytest.raises(InputError, match="not a MATLAB file"):
        reference_fit(tmp_path / "d_seg8.mat")
    savemat(str(tmp_path / "e_seg8.mat"), {"Affine": np.eye(4)}, format="5")
    with pytest.raises(InputError, match="no Twarp or ll"):
        reference_fit(tmp_path / "e_seg8.mat")

    # A reference folder holding SPM's parameter file: the bench reads it beside the maps.
    colin = _reference("colin27")
    folder = tmp_path / "reference" / "colin27"
    folder.mkdir(parents=True)
    (folder / "source.txt").write_text(f"{colin.source}\n")
    for m in (colin.wc1, colin.mwc1, colin.c1):
        (folder / m.name).symlink_to(m)
    assert reference_scans(tmp_path / "reference")[0].seg8 is None
    _seg8(folder / "colin27_seg8.mat", lattice * np.nan, np.nan)
    (found,) = reference_scans(tmp_path / "reference")
    assert reference_fit(found.seg8).startswith("failed")

    good = {"gmd_r": 0.92, "gmd_r_4mm": 0.98, "gmv_r_4mm": 0.98, "gm_volume_ratio": 0.98, "dice_native": 0.98}
    bad = {"gmd_r": 0.75, "gmd_r_4mm": 0.87, "gmv_r_4mm": 0.88, "gm_volume_ratio": 1.33, "dice_native": 0.86}
    line = summary_line([{**good, "spm_fit": "ok"}, {**bad, "spm_fit": failed}])
    assert line == (
        "fidelity vs SPM12 (1 scans, lowest; 1 failed SPM fits left out): GMD r 0.92 (4 mm 0.98), "
        "GMV r 4 mm 0.98, GM volume 0.98-0.98, Dice 0.98"
    )
    assert "(2 scans, lowest): GMD r 0.75 (4 mm 0.87)" in summary_line([{**good, "spm_fit": "ok"}, {**bad, "spm_fit": "unchecked"}])
    assert "every SPM fit failed" in summary_line([{**bad, "spm_fit": failed}])


@pytest.mark.slow
def test_colin27_maps_agree_with_spm(colin: tuple[Path, dict]) -> None:
    """Our Colin27 maps (``fast`` preset) against the shared SPM12 maps of Colin27, made by a
    working SPM fit (the scan padded with zeros; docs/preprocessing.md). Measured here: GMD r 0.930
    (4 mm 0.982), GMV r 4 mm 0.980, native Dice 0.987, GM volume 0.99x SPM's."""
    out, _ = colin
    scan = _reference("colin27")
    measures = preprocessed_agreement(scan, out)
    assert measures["gmd_r"] > 0.9 and measures["gmd_r_4mm"] > 0.97 and measures["gmv_r_4mm"] > 0.97, measures
    assert measures["dice_native"] > 0.97 and 0.95 < measures["gm_volume_ratio"] < 1.05, measures


def test_spms_mapping_read_from_its_parameters_reproduces_its_warped_map() -> None:
    """SPM's ``c1`` pushed to MNI through the positions read from its ``*_seg8.mat`` (``Affine``
    and the displacement ``Twarp``) is SPM's own ``wc1``: the reading of SPM's mapping is right."""
    import nibabel as nib

    from BrainImageNetADLib.preprocessing.normalise import warped_maps
    from BrainImageNetBench.fidelity import spm_positions

    scan = _reference("Subj3")
    c1 = nib.load(str(scan.c1))
    positions = spm_positions(scan.seg8, c1.shape, c1.affine)
    pushed, _, _ = warped_maps(np.asarray(c1.dataobj, dtype=np.float32).reshape(-1, 1), positions.reshape(-1, 3).astype(np.float32), 8.0)
    wc1 = _on_mni_grid(scan.wc1, "wc1")
    inside = (pushed[..., 0] > 0.05) | (wc1 > 0.05)
    assert np.corrcoef(pushed[..., 0][inside], wc1[inside])[0, 1] > 0.999


def test_the_time_line_puts_ours_beside_spms() -> None:
    from BrainImageNetBench.fidelity import timing_line

    line = timing_line([{"seconds": 61.2}, {"seconds": 74.9}, {"seconds": None}])
    assert line == "time per scan: ours 61-75 s (all scans, this run); SPM12's Segment 85-120 s per 2 mm scan on one thread"
