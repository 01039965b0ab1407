"""A T1 is recognised on physical grounds: every real T1 passes, whatever its CSF level; scans of
other contrasts fail with the kind named, whether real (the shared FLAIR) or made from a real
elderly T1 by a physical model of tissue intensity (``contrast_model``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.preprocessing import qc
from BrainImageNetBench.realscans import real_scans
from conftest import MODEL_BASE, REALDATA, needs_realdata


@pytest.mark.slow
@needs_realdata
def test_every_real_t1_passes_the_contrast_check_with_a_margin(real_scan_runs: tuple[Path, dict[str, dict]]) -> None:
    reports = real_scan_runs[1]
    t1s = [s.name for s in real_scans(REALDATA) if s.expect == "accept"]
    assert len(t1s) == 20
    for name in t1s:
        measures = reports[name]["measures"]
        assert reports[name]["verdict"] != "fail", (name, reports[name]["failures"])
        assert not any("contrast" in w for w in reports[name]["warnings"]), (name, reports[name]["warnings"])
        assert measures["grey_white_contrast"] >= qc.GREY_WHITE_WARN and measures["csf_gap"] >= qc.CSF_GAP_FAIL, (name, measures)


@pytest.mark.slow
@needs_realdata
def test_t1s_with_black_csf_pass(real_scan_runs: tuple[Path, dict[str, dict]]) -> None:
    """Dark CSF is what T1 weighting gives: a real elderly T1 with its CSF set to 0, and Colin27's
    ch2better, whose ventricles are black, are T1s."""
    reports = real_scan_runs[1]
    for name in ("csf_black", "ch2better") if "ch2better" in reports else ("csf_black",):
        assert reports[name]["verdict"] != "fail", (name, reports[name]["failures"])
        assert not any("contrast" in w for w in reports[name]["warnings"]), (name, reports[name]["warnings"])


@pytest.mark.slow
@needs_realdata
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("flair", "a FLAIR or a T1 without usable grey/white contrast"),
        ("flair_like", "a FLAIR or a T1 without usable grey/white contrast"),
        ("t2_like", "a T2- or proton-density-weighted scan"),
        ("grey_equals_white", "a FLAIR or a T1 without usable grey/white contrast"),
        ("grey_barely_below_white", "a FLAIR or a T1 without usable grey/white contrast"),
    ],
)
def test_other_contrasts_fail_with_the_kind_named(real_scan_runs: tuple[Path, dict[str, dict]], name: str, kind: str) -> None:
    report = real_scan_runs[1][name]
    assert report["verdict"] == "fail"
    assert report["failures"][0].startswith(f"tissue contrast is not that of a T1: looks like {kind}"), report["failures"]


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


@pytest.mark.slow
@needs_realdata
def test_the_contrast_measures_are_written_with_their_thresholds(real_scan_runs: tuple[Path, dict[str, dict]]) -> None:
    reports = real_scan_runs[1]
    measures = reports[MODEL_BASE]["measures"]
    assert set(measures["tissue_levels"]) == {"GM", "WM", "CSF", "GM_ml", "WM_ml", "CSF_ml"}
    assert measures["thresholds"]["grey_white_fail"] == qc.GREY_WHITE_FAIL
    json.dumps(reports["flair"], allow_nan=False)  # strict JSON even where a level is missing
