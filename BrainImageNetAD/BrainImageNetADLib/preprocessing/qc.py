"""Quality control of preprocessing: measures, a pass / warn / fail verdict, and a picture.

Measures (thresholds and the scans they were set on: docs/preprocessing.md and
docs/decisions/t1-contrast.md):

- the spatial Pearson correlation of the subject's GMD with SPM12's grey-matter prior inside the
  MNI152 brain mask (the paper excluded scans whose GMV correlated poorly with the cohort's mean);
- the signal-to-noise ratio in the deep white matter (``noise_level``): a very noisy scan's GM map
  follows the priors and still correlates well;
- T1 contrast on physical grounds (``tissue_levels``, ``contrast_kind``): white matter clearly
  brighter than grey, CSF darker than grey by a wide margin, measured on tissue that the fitted
  mixture and the priors agree on, with the priors placed by the contrast-blind affine. A scan of
  another contrast is refused as soon as this is measured (``refuse_other_contrast``); a doubtful
  one warns, and fails where registration needed the skull-to-skull fallback;
- the volume scale of the affine and the share of the brain in the field of view (a failed
  registration or a cropped scan), total intracranial volume, and a reversed header found while
  registering.

The separation of grey and white matter in the fitted tissue model is reported but sets no
verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core import grid, templates
from ..core.atomic import write_bytes_atomic
from ..core.errors import ContrastRefused

#: Below this correlation of GMD with SPM12's GM prior the map is not usable: the verdict is "fail".
GM_CORRELATION_FAIL = 0.45
#: Below this the verdict is at least "warn".
GM_CORRELATION_WARN = 0.55
#: White-matter intensity / noise SD (``noise_level``) below which the scan is too noisy to segment:
#: the GM map then follows the template priors, and its template correlation stays high ("fail").
SIGNAL_TO_NOISE_FAIL = 8.0
#: Below this the verdict is at least "warn".
SIGNAL_TO_NOISE_WARN = 15.0
#: A voxel counts as grey matter or CSF when the fitted mixture gives it at least this posterior and
#: the priors at least ``AGREED_PRIOR``: the contrast is measured on tissue both agree on, not on
#: the mixture's means, which partial volume and a poor fit can push into T1 order.
AGREED_POSTERIOR = 0.9
AGREED_PRIOR = 0.5
#: White matter's level is the most common intensity where its prior exceeds this: the deep white
#: matter, whose lesions (bright on a FLAIR, dark on a T1) and, in an atrophied brain, ventricles
#: pull a mean or a median but not the mode.
WHITE_CORE_PRIOR = 0.9
#: T1 weighting: white matter brighter than grey by at least this share of the white matter's
#: intensity ((WM - GM) / WM); below it the scan has no usable grey/white contrast ("fail"). Real
#: T1 scans measure 0.17-0.30, scans of other contrasts at most 0.05: docs/decisions/t1-contrast.md.
GREY_WHITE_FAIL = 0.10
#: Below this the contrast is doubtful: a warning, and a failure when registration needed the
#: skull-to-skull fallback (an unusual scan that also registered badly).
GREY_WHITE_WARN = 0.13
#: T1 weighting: CSF darker than grey matter by at least this share of the white matter's
#: intensity ((GM - CSF) / WM, levels of ``tissue_levels``).
CSF_GAP_FAIL = 0.15
#: Plausible total intracranial volume, mL: adults measure 1.2-1.9 L; brains already in MNI space
#: (Colin27, MNI152) measure 2.1-2.7 L with the template mask, so the range is wide.
TIV_RANGE_ML = (900.0, 2800.0)
#: Plausible volume scale of the affine to MNI (native mm^3 per MNI mm^3; the brain affine times
#: the affine onto SPM12's priors): 0.68-0.87 on the real adult and elderly 3D T1 scans measured
#: here, 1.06 for Colin27 (a large head), 1.09 for the MNI152 T1 itself (the priors' brain is
#: smaller than the MNI152 one). Outside the warn range the registration is suspect, outside the
#: fail range it has failed (a brain registered far too small or too large), whatever the GM map
#: looks like.
AFFINE_SCALE_WARN = (0.55, 1.15)
AFFINE_SCALE_FAIL = (0.45, 1.3)
#: Share of the brain (SPM12's GM + WM priors) that the registered scan covers (``brain_in_view``):
#: below the warn level part of the brain lies outside the field of view, below the fail level
#: too much is missing to measure it (a cropped scan, or a registration that placed the brain
#: outside the scan), whatever the GM map looks like.
BRAIN_IN_VIEW_WARN = 0.98
BRAIN_IN_VIEW_FAIL = 0.9
#: The intracranial region over which TIV is summed: the MNI voxels where SPM12's priors make GM +
#: WM + CSF more likely than not. Beyond it lie the scalp and the space around the skull, where
#: the CSF class also takes voxels.
INTRACRANIAL_PRIOR = 0.5
VOXEL_ML = grid.MNI_VOXEL_MM3 / 1000.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def _rounded(value: float, digits: int = 4) -> float | None:
    """``value`` rounded for the report, None where it is not finite (strict JSON has no NaN)."""
    return round(value, digits) if np.isfinite(value) else None


def brain_in_view(t1_mni: np.ndarray) -> float:
    """Share of the brain, weighted by SPM12's GM + WM priors, where the T1 registered to the MNI
    grid (121, 145, 121; 0 outside the scan's field of view) has signal."""
    brain = templates.spm_tissue_priors()[..., :2].sum(axis=-1)
    return float((brain * (t1_mni > 0)).sum() / brain.sum())


def noise_level(t1_mni: np.ndarray, wm_prior: np.ndarray) -> tuple[float, float]:
    """(white-matter intensity, noise SD) of a T1 on the MNI grid, in its own units, measured in the
    template's deep white matter (prior > 0.9, eroded by one voxel), where the tissue is uniform:
    the median intensity, and the robust SD (1.4826 x MAD) of each voxel's difference from the mean
    of its 3x3x3 neighbourhood, scaled back by sqrt(27/26). Ageing lowers grey/white contrast, not
    this noise, so it separates noisy scans from old brains where a contrast-to-noise ratio of the
    tissue model does not. Resampling to the 1.5 mm grid smooths noise, so the figures are
    comparable between scans of this pipeline, not with the scanner's own SNR."""
    from scipy import ndimage

    core = ndimage.binary_erosion(wm_prior > 0.9, iterations=1)
    t1 = t1_mni.astype(np.float64)
    residual = (t1 - ndimage.uniform_filter(t1, 3))[core]
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) * np.sqrt(27 / 26)
    return float(np.median(t1[core])), noise


def _mode(values: np.ndarray, samples: int = 20000) -> float:
    """The most common value of ``values`` (the peak of a Gaussian kernel density estimate over at
    most ``samples`` of them, drawn with a fixed seed)."""
    from scipy.stats import gaussian_kde

    if values.size > samples:
        values = np.random.default_rng(0).choice(values, samples, replace=False)
    low, high = np.percentile(values, [1, 99])
    if not high > low:
        return float(np.median(values))
    grid_values = np.linspace(low, high, 512)
    return float(grid_values[np.argmax(gaussian_kde(values)(grid_values))])


def tissue_levels(intensities: np.ndarray, posteriors: np.ndarray, priors: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """Intensities of GM, WM and CSF (keys ``GM``, ``WM``, ``CSF``, in the scan's units) and the
    volumes they were measured on (``GM_ml``..., native mL).

    GM and CSF: the median over the voxels that the fitted mixture (posterior >
    ``AGREED_POSTERIOR``) and the priors (> ``AGREED_PRIOR``) both give to that class. WM: the
    mode where its prior exceeds ``WHITE_CORE_PRIOR``, whatever the mixture says (on a FLAIR the
    mixture's brightest class is the lesions). Where no voxel qualifies the level is NaN, except
    CSF whose voxels the priors place all lack signal (a T1 with its CSF set to 0): 0.

    ``intensities`` (any shape) are voxels of the bias-corrected scan in native space, each
    standing for ``voxel_mm3``; ``posteriors`` and ``priors`` have that shape plus a last axis of
    6 classes in the order of ``segment.CLASSES``. The priors should be placed by a contrast-blind
    registration and the posteriors come from a mixture fitted with them: a mapping fitted on the
    mixture's likelihood aligns a FLAIR's brightest tissue with the white-matter prior."""
    signal = intensities > 0
    levels: dict[str, float] = {}
    for k, name in ((0, "GM"), (2, "CSF")):
        agreed = (posteriors[..., k] > AGREED_POSTERIOR) & (priors[..., k] > AGREED_PRIOR) & signal
        levels[name] = float(np.median(intensities[agreed])) if agreed.any() else float("nan")
        levels[f"{name}_ml"] = float(agreed.sum()) * voxel_mm3 / 1000.0
    core = (priors[..., 1] > WHITE_CORE_PRIOR) & signal
    levels["WM"] = _mode(intensities[core]) if core.sum() > 1 else float("nan")
    levels["WM_ml"] = float(core.sum()) * voxel_mm3 / 1000.0
    if not np.isfinite(levels["CSF"]) and ((priors[..., 2] > AGREED_PRIOR) & ~signal).any():
        levels["CSF"] = 0.0
    return levels


def contrast_kind(grey_white: float, csf_gap: float) -> str | None:
    """What the tissue contrast says the scan is when it is not a usable T1 (None when it is one):
    ``grey_white`` is (WM - GM) / WM and ``csf_gap`` (GM - CSF) / WM, levels of ``tissue_levels``."""
    if not (np.isfinite(grey_white) and np.isfinite(csf_gap)):
        return "a scan whose grey matter, white matter and CSF could not be told apart"
    if csf_gap < 0 and grey_white < 0:
        return "a T2- or proton-density-weighted scan (CSF brighter than grey matter, grey brighter than white)"
    if csf_gap < 0:
        return "a scan with bright CSF, not a T1 (CSF brighter than grey matter)"
    if grey_white < 0:
        return "a FLAIR (CSF dark, grey matter brighter than white)"
    if grey_white < GREY_WHITE_FAIL and csf_gap < CSF_GAP_FAIL:
        return "a scan without T1 contrast (grey matter, white matter and CSF at similar intensities)"
    if grey_white < GREY_WHITE_FAIL:
        return "a FLAIR or a T1 without usable grey/white contrast, such as a very noisy one (CSF dark, grey and white matter alike)"
    if csf_gap < CSF_GAP_FAIL:
        return "a scan whose CSF is not dark, not a T1"
    return None


def _contrast(levels: dict[str, float]) -> tuple[float, float, str]:
    """(grey_white, csf_gap, the two in words with their thresholds) from tissue levels
    (``tissue_levels``): (WM - GM) / WM and (GM - CSF) / WM, NaN without a positive WM level."""
    wm_level = levels["WM"] if levels["WM"] > 0 else float("nan")
    grey_white = (levels["WM"] - levels["GM"]) / wm_level
    csf_gap = (levels["GM"] - levels["CSF"]) / wm_level
    text = (
        f"white matter {100 * grey_white:.0f}% brighter than grey (a T1 at least {100 * GREY_WHITE_FAIL:.0f}%), "
        f"CSF {100 * csf_gap:.0f}% of the white matter's intensity darker than grey (at least {100 * CSF_GAP_FAIL:.0f}%)"
    )
    return grey_white, csf_gap, text


def contrast_measures(levels: dict[str, float]) -> dict[str, Any]:
    """The contrast measures of tissue levels (``tissue_levels``) as the report holds them:
    ``grey_white_contrast``, ``csf_gap`` and ``tissue_levels``, None where not finite."""
    grey_white, csf_gap, _ = _contrast(levels)
    return {
        "grey_white_contrast": _rounded(grey_white),
        "csf_gap": _rounded(csf_gap),
        "tissue_levels": {k: _rounded(v) for k, v in levels.items()},
    }


def refuse_other_contrast(levels: dict[str, float]) -> None:
    """Raise ``ContrastRefused`` when tissue levels (``tissue_levels``) are not those of a T1
    (``contrast_kind``), naming what the scan looks like. Called as soon as the levels are
    measured: a scan of another contrast gets no maps, whatever option is given."""
    grey_white, csf_gap, text = _contrast(levels)
    kind = contrast_kind(grey_white, csf_gap)
    if kind is not None:
        raise ContrastRefused(
            f"tissue contrast is not that of a T1: looks like {kind}; {text}. Load the T1-weighted series", contrast_measures(levels)
        )


def hippocampi() -> np.ndarray:
    """The left and right AAL hippocampi on the MNI grid: bool (121, 145, 121). Their volume in
    ``assess`` is that of the native region the mapping carries onto them (the Jacobian summed
    over them), whatever its tissue classes, as an atlas-based segmentation measures a structure:
    on a 2 mm scan much of the hippocampus is classified as white matter or CSF, so GM within it
    measures the structure poorly (docs/validation.md, the hippocampus against DLMUSE)."""
    return np.isin(templates.aal_labels(), list(templates.AAL_HIPPOCAMPI))


def assess(
    gmd: np.ndarray,
    posteriors: np.ndarray,
    jacobian: np.ndarray,
    t1_mni: np.ndarray,
    templates_on_grid: dict[str, np.ndarray],
    tissue_model: dict[str, float],
    read_warnings: list[str],
    tissue_levels: dict[str, float],
    affine_determinant: float | None = None,
    known_failures: list[str] | None = None,
    used_head_affine: bool = False,
) -> dict[str, Any]:
    """QC report of one preprocessing. All arrays lie on the 121x145x121 MNI grid; ``posteriors``
    has shape (121, 145, 121, 3) for CSF, GM, WM; ``jacobian`` is native mm^3 per MNI mm^3;
    ``tissue_model`` holds the segmentation's class means, GM/WM SD and class weights
    (``MixtureModel.summary``); ``tissue_levels`` the tissue intensities (``tissue_levels``) of a
    scan that ``refuse_other_contrast`` let through, whose contrast may still be doubtful;
    ``affine_determinant`` is the volume scale of the affine to MNI (native mm^3 per MNI mm^3);
    ``known_failures`` are failures found before (slice thickness) or while registering (a
    reversed header); ``used_head_affine``: registration fell back to the skull-to-skull affine,
    which turns a doubtful contrast into a failure.
    Returns measures, volumes in mL (native space: CSF, GM and WM over the whole grid, TIV their
    sum over the intracranial region, ``INTRACRANIAL_PRIOR``; the hippocampi, ``hippocampi``),
    warnings, failures and the verdict."""
    mask = templates_on_grid["mask"] > 0
    brain = (templates_on_grid["GM"] + templates_on_grid["WM"]) > 0.5
    priors = templates.spm_tissue_priors()
    gm_correlation = _pearson(gmd[mask], priors[..., 0][mask])
    t1_correlation = _pearson(t1_mni[brain], templates_on_grid["T1"][brain])
    volumes = {f"{t}_ml": float((posteriors[..., k] * jacobian).sum() * VOXEL_ML) for k, t in enumerate(("CSF", "GM", "WM"))}
    intracranial = priors[..., :3].sum(axis=-1) > INTRACRANIAL_PRIOR
    tiv = float((posteriors.sum(axis=-1) * jacobian)[intracranial].sum() * VOXEL_ML)
    volumes["hippocampus_ml"] = float(jacobian[hippocampi()].sum() * VOXEL_ML)
    white, noise = noise_level(t1_mni, templates_on_grid["WM"])
    signal_to_noise = white / max(noise, 1e-12)
    # The tissue model is fitted on the scan as read, the noise measured on the N4-corrected T1:
    # the contrast relative to the white matter carries over between the two intensity scales.
    contrast_to_noise = (tissue_model["WM_mean"] - tissue_model["GM_mean"]) / max(tissue_model["WM_mean"], 1e-12) * signal_to_noise
    separation = (tissue_model["WM_mean"] - tissue_model["GM_mean"]) / max(tissue_model["sd"], 1e-12)
    grey_white, csf_gap, levels_text = _contrast(tissue_levels)
    warnings = list(read_warnings)
    failures = list(known_failures or [])
    if grey_white < GREY_WHITE_WARN and used_head_affine:
        failures.append(
            f"tissue contrast is doubtful and registration needed the skull-to-skull fallback: {levels_text}, "
            f"doubtful below {100 * GREY_WHITE_WARN:.0f}%; is this the T1 series?"
        )
    elif grey_white < GREY_WHITE_WARN:
        warnings.append(f"weak grey/white contrast for a T1: {levels_text}, doubtful below {100 * GREY_WHITE_WARN:.0f}%")
    if signal_to_noise < SIGNAL_TO_NOISE_FAIL:
        failures.append(
            f"signal-to-noise ratio {signal_to_noise:.1f} (white matter / noise) is too low to segment (fail below {SIGNAL_TO_NOISE_FAIL:g}): "
            "a very noisy scan, whose grey-matter map would follow the template"
        )
    elif signal_to_noise < SIGNAL_TO_NOISE_WARN:
        warnings.append(
            f"signal-to-noise ratio {signal_to_noise:.1f} (white matter / noise) is low (warn below {SIGNAL_TO_NOISE_WARN:g}): check qc_gmd.png"
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
    coverage = brain_in_view(t1_mni)
    if coverage < BRAIN_IN_VIEW_FAIL:
        failures.append(
            f"the scan shows only {100 * coverage:.0f}% of the brain (fail below {100 * BRAIN_IN_VIEW_FAIL:.0f}%): "
            "the field of view cuts it off, or the registration placed it outside the scan"
        )
    elif coverage < BRAIN_IN_VIEW_WARN:
        warnings.append(
            f"the scan shows {100 * coverage:.1f}% of the brain (warn below {100 * BRAIN_IN_VIEW_WARN:.0f}%): "
            "part of it lies outside the field of view; check qc_gmd.png"
        )
    verdict = "fail" if failures else "warn" if warnings else "pass"
    return {
        "verdict": verdict,
        "failures": failures,
        "warnings": warnings,
        "measures": {
            "gm_template_correlation": round(gm_correlation, 4),
            "t1_template_correlation": round(t1_correlation, 4),
            "signal_to_noise": round(signal_to_noise, 2),
            **contrast_measures(tissue_levels),
            "gm_wm_contrast_to_noise": round(contrast_to_noise, 3),
            "gm_wm_separation": round(separation, 3),
            "affine_scale": None if affine_determinant is None else round(affine_determinant, 4),
            "brain_in_view": round(coverage, 4),
            "thresholds": {
                "gm_template_correlation_fail": GM_CORRELATION_FAIL,
                "gm_template_correlation_warn": GM_CORRELATION_WARN,
                "grey_white_fail": GREY_WHITE_FAIL,
                "grey_white_warn": GREY_WHITE_WARN,
                "csf_gap_fail": CSF_GAP_FAIL,
                "signal_to_noise_fail": SIGNAL_TO_NOISE_FAIL,
                "signal_to_noise_warn": SIGNAL_TO_NOISE_WARN,
                "affine_scale_warn": list(AFFINE_SCALE_WARN),
                "affine_scale_fail": list(AFFINE_SCALE_FAIL),
                "brain_in_view_warn": BRAIN_IN_VIEW_WARN,
                "brain_in_view_fail": BRAIN_IN_VIEW_FAIL,
            },
        },
        "tissue_model": {k: round(v, 4) for k, v in tissue_model.items()},
        "volumes_ml": {**{k: round(v, 1) for k, v in volumes.items()}, "TIV_ml": round(tiv, 1)},
    }


def write_overlay_png(path: str | Path, gmd: np.ndarray, t1_mni: np.ndarray, report: dict[str, Any]) -> None:
    """What a reader checks, as a PNG: mid-slices (sagittal, coronal, axial) of the person's own T1
    registered to MNI (grey), their GM map (red, where GMD >= 0.2) and the outline of the MNI152
    brain (cyan: the person's brain should fill it), with the verdict and its reasons. ``gmd`` and
    ``t1_mni`` lie on the 121x145x121 MNI grid."""
    import io
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.templates import mni_templates_on_grid

    tm = mni_templates_on_grid()
    outline = (tm["mask"] > 0).astype(np.float32)
    top = float(np.percentile(t1_mni[outline > 0], 99))
    top = top if top > 0 else float(t1_mni.max()) or 1.0
    reasons = report["failures"] + report["warnings"]
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6 + 0.22 * min(len(reasons), 6)), facecolor="black")
    for ax, index in zip(axes, (np.s_[60, :, :], np.s_[:, 86, :], np.s_[:, :, 60]), strict=True):
        ax.imshow(np.rot90(t1_mni[index]), cmap="gray", vmin=0, vmax=top)
        ax.imshow(np.rot90(np.ma.masked_less(gmd[index], 0.2)), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
        ax.contour(np.rot90(outline[index]), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_axis_off()
    measures = report["measures"]
    title = f"QC {report['verdict'].upper()}: GM correlation with template {measures['gm_template_correlation']:.2f}"
    lines = [textwrap.shorten(r, 150) for r in reasons[:6]]
    figure.suptitle("\n".join([title, *lines]), color="white", fontsize=9, x=0.02, ha="left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, facecolor="black")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
