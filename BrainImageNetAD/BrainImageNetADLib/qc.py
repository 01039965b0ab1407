"""Quality control of preprocessing: measures, a pass / warn / fail verdict, and a picture.

The paper excluded scans whose GMV correlated with the cohort's mean GMV template below the mean
minus 2 SD. Without a cohort here, the measure is the spatial Pearson correlation of the subject's
GMD with the MNI152 2009 grey-matter probability map inside the template brain mask. Because the
GM map is registered to that template, a scan whose segmentation followed the priors rather than
its intensities (heavy noise) also correlates well: the grey/white contrast-to-noise ratio of the
fitted tissue model catches that case. Tissue contrast (CSF < GM < WM on a T1) and total
intracranial volume are checked too. Default thresholds were set from scans measured here
(README, "Preprocessing").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_bytes_atomic

#: Below this GMD/template correlation the segmentation is not usable: the verdict is "fail".
GM_CORRELATION_FAIL = 0.6
#: Below this the verdict is at least "warn".
GM_CORRELATION_WARN = 0.75
#: (WM mean - GM mean) / shared SD of the tissue model: below this the intensities cannot separate
#: grey from white matter and the GM map is mostly the template prior ("fail").
CONTRAST_TO_NOISE_FAIL = 0.8
#: Below this the verdict is at least "warn".
CONTRAST_TO_NOISE_WARN = 1.2
#: Plausible total intracranial volume, mL: adults measure 1.2-1.9 L; brains already in MNI space
#: (Colin27, MNI152) measure 2.1-2.7 L with the template mask, so the range is wide.
TIV_RANGE_ML = (900.0, 2800.0)
#: Plausible volume scale of the affine to MNI (native mm^3 per MNI mm^3): 0.56-0.77 on 18 real
#: adult and elderly scans, 0.92 for Colin27 (a large head), 1.00 for the MNI152 T1 itself; the
#: MNI152 brain is larger than nearly every real one. Outside the warn range the registration is
#: suspect, outside the fail range it has failed (a brain registered far too small or too large),
#: whatever the GM map looks like.
AFFINE_SCALE_WARN = (0.45, 1.05)
AFFINE_SCALE_FAIL = (0.35, 1.15)
VOXEL_ML = 1.5**3 / 1000.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def assess(
    gmd: np.ndarray,
    posteriors: np.ndarray,
    jacobian: np.ndarray,
    t1_mni: np.ndarray,
    templates_on_grid: dict[str, np.ndarray],
    tissue_model: dict[str, float],
    read_warnings: list[str],
    affine_determinant: float | None = None,
) -> dict[str, Any]:
    """QC report of one preprocessing. All arrays lie on the 121x145x121 MNI grid; ``posteriors``
    has shape (121, 145, 121, 3) for CSF, GM, WM; ``jacobian`` is native mm^3 per MNI mm^3;
    ``tissue_model`` holds the segmentation's class means and shared SD (``segment_tissues``);
    ``affine_determinant`` is the volume scale of the affine to MNI (native mm^3 per MNI mm^3).
    Returns measures, volumes in mL (native space), warnings, failures and the verdict."""
    mask = templates_on_grid["mask"] > 0
    brain = (templates_on_grid["GM"] + templates_on_grid["WM"]) > 0.5
    gm_correlation = _pearson(gmd[mask], templates_on_grid["GM"][mask])
    t1_correlation = _pearson(t1_mni[brain], templates_on_grid["T1"][brain])
    volumes = {f"{t}_ml": float((posteriors[..., k] * jacobian).sum() * VOXEL_ML) for k, t in enumerate(("CSF", "GM", "WM"))}
    tiv = sum(volumes.values())
    class_masks = [brain & (posteriors[..., k] > 0.5) for k in range(3)]
    csf, gm, wm = (float(t1_mni[m].mean()) if m.any() else 0.0 for m in class_masks)
    contrast_to_noise = (tissue_model["WM_mean"] - tissue_model["GM_mean"]) / max(tissue_model["sd"], 1e-12)
    warnings = list(read_warnings)
    failures = []
    if not csf < gm < wm:
        failures.append(
            f"tissue contrast is not that of a T1 (mean intensity CSF {csf:.3g}, GM {gm:.3g}, WM {wm:.3g}; expected CSF < GM < WM)"
        )
    elif contrast_to_noise < CONTRAST_TO_NOISE_FAIL:
        failures.append(
            f"grey/white-matter contrast-to-noise ratio {contrast_to_noise:.2f} is too low to segment (fail below {CONTRAST_TO_NOISE_FAIL}): a very noisy scan"
        )
    elif contrast_to_noise < CONTRAST_TO_NOISE_WARN:
        warnings.append(
            f"grey/white-matter contrast-to-noise ratio {contrast_to_noise:.2f} is low (warn below {CONTRAST_TO_NOISE_WARN}): check qc_gmd.png"
        )
    if gm_correlation < GM_CORRELATION_FAIL:
        failures.append(
            f"grey-matter map correlates {gm_correlation:.2f} with the template (fail below {GM_CORRELATION_FAIL}): segmentation or registration failed"
        )
    elif gm_correlation < GM_CORRELATION_WARN:
        warnings.append(
            f"grey-matter map correlates {gm_correlation:.2f} with the template (warn below {GM_CORRELATION_WARN}): check qc_gmd.png"
        )
    if affine_determinant is not None and not AFFINE_SCALE_FAIL[0] <= affine_determinant <= AFFINE_SCALE_FAIL[1]:
        failures.append(
            f"the affine to MNI scales the head by {affine_determinant:.2f} in volume (fail outside {AFFINE_SCALE_FAIL[0]}-{AFFINE_SCALE_FAIL[1]}): "
            "registration failed"
        )
    elif affine_determinant is not None and not AFFINE_SCALE_WARN[0] <= affine_determinant <= AFFINE_SCALE_WARN[1]:
        warnings.append(
            f"the affine to MNI scales the head by {affine_determinant:.2f} in volume (warn outside {AFFINE_SCALE_WARN[0]}-{AFFINE_SCALE_WARN[1]}): "
            "check the registration in qc_gmd.png"
        )
    if not TIV_RANGE_ML[0] <= tiv <= TIV_RANGE_ML[1]:
        warnings.append(
            f"total intracranial volume {tiv:.0f} mL is outside {TIV_RANGE_ML[0]:.0f}-{TIV_RANGE_ML[1]:.0f} mL: check the registration and the voxel size in the header"
        )
    verdict = "fail" if failures else "warn" if warnings else "pass"
    return {
        "verdict": verdict,
        "failures": failures,
        "warnings": warnings,
        "measures": {
            "gm_template_correlation": round(gm_correlation, 4),
            "t1_template_correlation": round(t1_correlation, 4),
            "gm_wm_contrast_to_noise": round(contrast_to_noise, 3),
            "affine_scale": None if affine_determinant is None else round(affine_determinant, 4),
            "thresholds": {
                "gm_template_correlation_fail": GM_CORRELATION_FAIL,
                "gm_template_correlation_warn": GM_CORRELATION_WARN,
                "gm_wm_contrast_to_noise_fail": CONTRAST_TO_NOISE_FAIL,
                "gm_wm_contrast_to_noise_warn": CONTRAST_TO_NOISE_WARN,
                "affine_scale_warn": list(AFFINE_SCALE_WARN),
                "affine_scale_fail": list(AFFINE_SCALE_FAIL),
            },
        },
        "tissue_model": {k: round(v, 4) for k, v in tissue_model.items()},
        "volumes_ml": {**{k: round(v, 1) for k, v in volumes.items()}, "TIV_ml": round(tiv, 1)},
    }


def write_overlay_png(path: str | Path, gmd: np.ndarray, report: dict[str, Any]) -> None:
    """Mid-slices (sagittal, coronal, axial) of the GMD map in red over the MNI152 T1 (grey), with
    the verdict in the title, as a PNG for a person to check."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .templates import mni_templates_on_grid

    t1 = mni_templates_on_grid()["T1"]
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6), facecolor="black")
    for ax, index in zip(axes, (np.s_[60, :, :], np.s_[:, 86, :], np.s_[:, :, 60]), strict=True):
        ax.imshow(np.rot90(t1[index]), cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.rot90(np.ma.masked_less(gmd[index], 0.2)), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        ax.set_axis_off()
    measures = report["measures"]
    figure.suptitle(
        f"QC {report['verdict'].upper()}: GM correlation with template {measures['gm_template_correlation']:.2f}", color="white"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, facecolor="black")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
