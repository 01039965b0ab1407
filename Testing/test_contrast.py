"""The contrast check's rules: the kind of scan named from the physics of each contrast, and a
doubtful contrast failing where registration needed the skull fallback. The check on real and
physical-model scans: ``test_real_scans_preprocessed``."""

from __future__ import annotations

import numpy as np

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.preprocessing import qc


def _assess(levels: dict[str, float], used_head_affine: bool) -> dict:
    tm = templates.mni_templates_on_grid()
    posteriors = np.stack([tm["CSF"], tm["GM"], tm["WM"]], axis=-1)
    model = {"CSF_mean": 0.2, "GM_mean": 0.6, "WM_mean": 1.0, "sd": 0.1}
    return qc.assess(
        tm["GM"], posteriors, np.ones(grid.MNI_SHAPE, np.float32), tm["T1"], tm, model, [], levels, 0.7, used_head_affine=used_head_affine
    )


def test_doubtful_contrast_warns_and_fails_when_registration_needed_the_skull_fallback() -> None:
    """Between the fail and the warn level the contrast is doubtful: alone a warning; with the
    skull-to-skull affine kept because the brain's diverged, a failure."""
    doubtful = (qc.GREY_WHITE_FAIL + qc.GREY_WHITE_WARN) / 2
    levels = {"CSF": 0.3, "GM": 1.0 - doubtful, "WM": 1.0}
    alone = _assess(levels, used_head_affine=False)
    assert alone["verdict"] == "warn" and alone["warnings"][0].startswith("weak grey/white contrast for a T1")
    fallback = _assess(levels, used_head_affine=True)
    assert fallback["verdict"] == "fail" and fallback["failures"][0].startswith("tissue contrast is doubtful and registration needed")
    clear = _assess({"CSF": 0.3, "GM": 0.7, "WM": 1.0}, used_head_affine=True)
    assert clear["verdict"] == "pass", clear


def test_the_kind_follows_the_physics_of_each_contrast() -> None:
    assert qc.contrast_kind(0.25, 0.4) is None  # T1: white over grey, CSF far below
    assert qc.contrast_kind(0.25, 0.75) is None  # T1 with black CSF
    assert qc.contrast_kind(-0.1, 0.8).startswith("a FLAIR")
    assert qc.contrast_kind(-0.3, -0.7).startswith("a T2- or proton-density")
    assert qc.contrast_kind(0.2, -0.5).startswith("a scan with bright CSF")
    assert qc.contrast_kind(0.02, 0.02).startswith("a scan without T1 contrast")
    assert qc.contrast_kind(float("nan"), 0.3).startswith("a scan whose grey matter")


# END
