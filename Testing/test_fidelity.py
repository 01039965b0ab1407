"""The measures of agreement with SPM12's maps, on SPM12's own reference maps (``../shared``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from BrainImageNetADLib.fidelity import (
    _on_mni_grid,
    dice,
    map_agreement,
    preprocessed_agreement,
    reference_scans,
    scan_fidelity,
    summary_line,
)
from conftest import ROOT

REFERENCE = ROOT.parent / "shared" / "reference" / "spm12"
pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="the SPM12 reference maps (../shared/reference/spm12) are not beside this checkout"
)


def test_reference_folder_is_read() -> None:
    scans = {s.name: s for s in reference_scans(REFERENCE)}
    assert "colin27" in scans and len(scans) >= 5
    assert all(s.source.exists() for s in scans.values())
    assert scans["colin27"].wc1.name == "wc1colin27.nii.gz" and scans["colin27"].c1.name == "c1colin27.nii.gz"


def test_measures_on_spm_maps() -> None:
    scan = next(s for s in reference_scans(REFERENCE) if s.name == "colin27")
    wc1, mwc1 = _on_mni_grid(scan.wc1, "wc1"), _on_mni_grid(scan.mwc1, "mwc1")
    same = map_agreement(wc1, mwc1, wc1, mwc1)
    assert same["gmd_r"] == pytest.approx(1.0) and same["gmv_r_4mm"] == pytest.approx(1.0)
    assert same["gm_volume_ratio"] == pytest.approx(1.0) and 600 < same["spm_gm_ml"] < 900  # SPM's Colin27: 762 mL
    # A map one voxel (1.5 mm) off: the thin cortical ribbon makes the voxelwise agreement drop to
    # about 0.69, the 4 mm-smoothed one to about 0.91; 10% more volume shows in the ratio.
    shifted = map_agreement(np.roll(wc1, 1, axis=1), np.roll(mwc1, 1, axis=1) * 1.1, wc1, mwc1)
    assert shifted["gmd_r"] < 0.8 < shifted["gmd_r_4mm"] < 1.0
    assert shifted["gm_volume_ratio"] == pytest.approx(1.1)
    mask = wc1 > 0.5
    assert dice(mask, mask) == 1.0 and dice(mask, np.roll(mask, 2, axis=0)) < 0.9
    line = summary_line([{**shifted, "dice_native": 0.8}, {**same, "dice_native": 0.9}])
    assert line.startswith("fidelity vs SPM12 (2 scans, lowest): GMD r ") and "GM volume 1.00-1.10, Dice 0.80" in line


@pytest.mark.slow
def test_colin27_maps_agree_with_spm(colin: tuple[Path, dict]) -> None:
    """Our Colin27 maps against SPM12's (``fast`` preset; README table). Measured: GMD r 0.75
    (4 mm 0.874), GMV r 4 mm 0.879, native Dice 0.863, GM volume 1.33x SPM's. The targets (r >=
    0.90 at 4 mm, volume within 5 %) are not met on this average of 27 scans: segmenting the
    N4-corrected scan gave 0.81 / 0.910, 1.27x, and left every real scan further from SPM's maps
    (``bias_field``); the softer displacement (stiffness 1.5) that brings every real scan closer to
    SPM takes Colin27 from 0.79 / 0.888 (2.5) and 0.85 / 0.91 (5)."""
    out, _ = colin
    scan = next(s for s in reference_scans(REFERENCE) if s.name == "colin27")
    measures = preprocessed_agreement(scan, out)
    assert measures["gmd_r"] > 0.73 and measures["gmd_r_4mm"] > 0.85 and measures["gmv_r_4mm"] > 0.85
    assert measures["dice_native"] > 0.85 and 1.0 < measures["gm_volume_ratio"] < 1.4


@pytest.mark.slow
def test_a_real_scan_agrees_with_spm() -> None:
    """IXI012 (a healthy man of 38, 2 mm voxels), as ``bench fidelity`` measures it. Measured:
    GMD r 0.90 (4 mm 0.97), GMV r 4 mm 0.965, GM volume 0.99x SPM's, native Dice 0.95 (unsmoothed
    agreement on 2 mm scans is capped by SPM's own speckled maps; with the stiffer displacement
    of stiffness 2.5 it was 0.88, with 5 0.84, so the unsmoothed bound holds the softer one;
    segmenting the N4-corrected scan 0.88 / 0.97, 0.96x; without the bias field fitted in the mixture 0.86 /
    0.95, Dice 0.92; with uniform class weights 0.87 / 0.96, 0.90x, Dice 0.94)."""
    scan = next(s for s in reference_scans(REFERENCE) if s.name == "IXI012-HH-1211")
    measures = scan_fidelity(scan)
    assert measures["gmd_r"] > 0.885 and measures["gmd_r_4mm"] > 0.95 and measures["gmv_r_4mm"] > 0.95
    assert measures["dice_native"] > 0.93 and 0.95 < measures["gm_volume_ratio"] < 1.05
