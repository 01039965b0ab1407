"""T1 preprocessing: a raw T1 in native space to GMD and GMV maps on the MNI 1.5 mm grid.

The order is that of SPM's VBM with DARTEL, which produced the paper's maps: segment first, then
register the tissue maps to tissue templates. Stages (ANTsPy): read and validate -> affine to
the Colin27 head (3 mm), then affine of the brain to the MNI152 2009 T1 inside its brain mask
(3 mm) -> N4 bias correction (low resolution, field applied at full resolution) -> T1 resampled
onto the 121x145x121 MNI grid with the affine and segmented there into CSF, GM and WM with
template priors -> diffeomorphic SyN of the GM and WM maps to the template GM and WM maps (the
role DARTEL plays in SPM) -> GMD = GM map warped; GMV = GMD x Jacobian determinant of the
MNI-to-native mapping (native mm^3 per MNI mm^3) -> QC. The transforms are kept so that maps move
between the model grid and the patient's native grid (see ``transforms``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import grid, qc, templates
from .atomic import write_json_atomic, write_nifti_atomic
from .progress import PREPROCESSING_STAGES, CancelCallback, ProgressCallback, check_cancel
from .segment import TISSUES, segment_tissues
from .t1io import T1Image, read_t1

REGISTRATION_SEED = 20220421

#: Files a finished preprocessing folder holds; ``qc.json`` is written last.
OUTPUT_FILES = ("gmd.nii.gz", "gmv.nii.gz", "t1_mni.nii.gz", "transforms", "qc_gmd.png", "qc.json")


@dataclass(frozen=True)
class PreprocessSettings:
    """Settings of a preset (times for 2 cores, see README): N4 fitting grid (mm), grid of the
    tissue-map SyN (mm) and its iterations per level (coarse to fine; the levels run at 4, 2 and
    1 times that spacing), EM iterations of the segmentation."""

    name: str
    n4_spacing_mm: float
    syn_spacing_mm: float
    syn_iterations: tuple[int, int, int]
    segmentation_iterations: int


PRESETS = {
    "fast": PreprocessSettings("fast", 3.0, 2.5, (40, 20, 10), 15),
    "accurate": PreprocessSettings("accurate", 2.0, 2.0, (60, 40, 20), 25),
}


def canonical_grid(image, spacing_mm: float = 1.0):
    """An empty ANTs image covering ``image``'s field of view on a lattice fixed in physical space:
    identity direction, ``spacing_mm`` voxels, corners snapped to multiples of the spacing."""
    import ants

    size = np.array(image.shape, dtype=float) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])
    physical = np.asarray(image.origin) + (np.asarray(image.direction) @ (corners * np.asarray(image.spacing)).T).T
    low = np.floor(physical.min(axis=0) / spacing_mm) * spacing_mm
    high = np.ceil(physical.max(axis=0) / spacing_mm) * spacing_mm
    shape = tuple(int(n) for n in np.round((high - low) / spacing_mm) + 1)
    return ants.make_image(shape, 0.0, spacing=(spacing_mm,) * 3, origin=tuple(low), direction=np.eye(3), pixeltype="float")


def is_done(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a finished preprocessing (its ``qc.json`` exists)."""
    return (Path(out_dir) / "qc.json").is_file()


def preprocess_t1(
    t1_path: str | Path,
    out_dir: str | Path,
    preset: str = "fast",
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> dict[str, Any]:
    """Preprocess one T1 file (NIfTI/NRRD/MHA/DICOM folder) into ``out_dir``; return the QC report.

    Writes ``gmd.nii.gz`` and ``gmv.nii.gz`` (121x145x121, MNI 1.5 mm, SPM's grid), ``t1_mni.nii.gz``,
    ``transforms/`` (ANTs files plus ``native_grid.json``), ``qc_gmd.png`` and ``qc.json`` last.
    Each file is written atomically. ``progress(stage, fraction)`` is called at each stage;
    ``should_cancel()`` is polled between stages and stops the run with ``Cancelled``.
    """
    import ants

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    settings = PRESETS[preset]
    # Fixed seed and one ITK thread: registration is then reproducible (the same scan gives the
    # same maps); multi-threaded metric sums differ between runs and can change the optimum.
    ants.config.set_ants_deterministic(True, seed_value=REGISTRATION_SEED)
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def stage_done(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 2)
        clock[0] = now
        if progress:
            progress(name, (PREPROCESSING_STAGES.index(name) + 1) / len(PREPROCESSING_STAGES))
        check_cancel(should_cancel, "preprocessing")

    t1 = read_t1(t1_path)
    # Work on a grid fixed in physical space: the same anatomy stored with other axis orders,
    # flips or voxel sizes then enters registration and segmentation identically.
    working = ants.resample_image_to_target(t1.image, canonical_grid(t1.image), interp_type="linear")
    stage_done("read")

    # ANTs writes its transforms to files: keep them in a folder removed at the end, whatever happens.
    with tempfile.TemporaryDirectory(prefix="brainimagenet-ants-") as scratch:
        return _normalise(t1_path, t1, working, out_dir, settings, Path(scratch), timings, stage_done)


def _normalise(
    t1_path: str | Path,
    t1: T1Image,
    working,
    out_dir: Path,
    settings: PreprocessSettings,
    scratch: Path,
    timings: dict[str, float],
    stage_done: Callable[[str], None],
) -> dict[str, Any]:
    """The stages after reading (see the module docstring); ANTs files go to ``scratch``."""
    import ants

    native = t1.image
    tm = templates.mni_templates_on_grid()
    mni_mask = templates.ants_from_ras(tm["mask"], grid.MNI_AFFINE)
    brain_affine, affine_record = _affine_to_mni(working, tm, mni_mask, scratch)
    registration_warnings, registration_failures = [], []
    if affine_record["reversed_axis"]:
        registration_failures.append(
            f"orientation: the scan fits the head template far better mirrored along the {affine_record['reversed_axis']} axis "
            f"(mutual information {affine_record['fit']:.3f} as stored, {affine_record['flipped_fit'][affine_record['reversed_axis']]:.3f} "
            "mirrored): its header has that axis reversed; correct the orientation in the header and run again"
        )
    if affine_record["used"] == "head":
        registration_warnings.append(
            f"the brain-to-brain affine diverged (it changed the volume {affine_record['brain_to_head']:.2f}x the skull-to-skull "
            "affine, outside the 0.7-1.3 seen on good scans); the skull-to-skull affine was used: check qc_gmd.png"
        )
    stage_done("affine")

    lowres = ants.resample_image(working, (settings.n4_spacing_mm,) * 3, use_voxels=False, interp_type=0)
    mask_low = ants.apply_transforms(lowres, mni_mask, brain_affine, interpolator="linear", whichtoinvert=[True])
    mask_low = ants.threshold_image(mask_low, 0.5, 2.0).morphology("dilate", 2)
    bias_low = ants.n4_bias_field_correction(lowres, mask=mask_low, shrink_factor=2, return_bias_field=True)
    # Outside the head the fitted field can approach zero: bound it so that dividing cannot explode.
    floor = 0.2 * float(np.median(bias_low.numpy()[mask_low.numpy() > 0]))
    bias = ants.resample_image_to_target(bias_low, working, interp_type="linear").numpy()
    corrected = working.new_image_like(working.numpy() / np.maximum(bias, floor))
    stage_done("n4")

    reference = templates.mni_grid_reference()
    mask = tm["mask"] > 0
    priors = np.stack([tm[t] for t in TISSUES], axis=-1)
    t1_affine = ants.apply_transforms(reference, corrected, brain_affine, interpolator="linear").numpy()
    affine_posteriors, tissue_model = segment_tissues(t1_affine, priors, mask, iterations=settings.segmentation_iterations)
    stage_done("segment")

    registration = _register_tissues(affine_posteriors, tm, settings, scratch)
    warp = registration["fwdtransforms"][0]
    posteriors = np.stack(
        [
            ants.apply_transforms(reference, templates.ants_from_ras(affine_posteriors[..., k], grid.MNI_AFFINE), [warp]).numpy()
            for k in range(len(TISSUES))
        ],
        axis=-1,
    ).clip(0.0, 1.0)
    t1_mni = ants.apply_transforms(reference, corrected, [warp, *brain_affine], interpolator="linear").numpy()
    warp_jacobian = ants.create_jacobian_determinant_image(registration["fixed"], warp)
    warp_jacobian = ants.resample_image_to_target(warp_jacobian, reference, interp_type="linear").numpy()
    affine_scale = affine_record["determinant"]
    jacobian = (warp_jacobian * affine_scale).astype(np.float32)
    gmd = posteriors[..., 1]
    gmv = gmd * jacobian
    stage_done("syn")

    report = qc.assess(
        gmd=gmd,
        posteriors=posteriors,
        jacobian=jacobian,
        t1_mni=t1_mni,
        templates_on_grid=tm,
        tissue_model=tissue_model,
        read_warnings=t1.warnings + registration_warnings,
        known_failures=t1.failures + registration_failures,
        affine_determinant=affine_scale,
    )
    report.update(
        {
            "input": {**t1.info, "path": str(Path(t1_path).resolve())},
            "preset": settings.name,
            "affine_determinant": affine_scale,
            "affine": {k: round(v, 4) if isinstance(v, float) else v for k, v in affine_record.items()},
        }
    )
    transform_files = [warp, brain_affine[0], registration["invtransforms"][1]]
    _write_outputs(out_dir, gmd, gmv, t1_mni, transform_files, native, report, timings, stage_done)
    return report


#: Accepted range of the brain-to-brain affine's volume change relative to the skull-to-skull one
#: (determinant ratio). Measured on 21 real scans: 0.84-1.00 where the brain step worked; 1.66-2.01
#: where it diverged (three atrophied elderly brains, registered too small in MNI space).
BRAIN_TO_HEAD_SCALE = (0.7, 1.3)


def _determinant(transform_file: str) -> float:
    import ants

    return float(abs(np.linalg.det(np.array(ants.read_transform(transform_file).parameters[:9]).reshape(3, 3))))


def _affine_to_mni(working, tm: dict[str, np.ndarray], mni_mask, scratch: Path) -> tuple[list[str], dict[str, Any]]:
    """Affine of the T1 (canonical grid, native space) to MNI: skull to skull with the Colin27
    head, then brain to brain with the MNI152 T1, the metric taken inside the template's brain
    mask only, so that the brain's own outline, not a mask drawn from the first step, sets the
    scale. Both at 3 mm. On atrophied brains the second step can diverge (enlarged CSF spaces pull
    the template's brain over the skull): when it changes the volume by a factor outside
    ``BRAIN_TO_HEAD_SCALE`` of the first, the skull-to-skull affine is kept and the report says so.

    Returns the ANTs transform list (one file, MNI points to native points) and a record of both
    steps (determinants: native mm^3 per MNI mm^3; ``used``: ``brain`` or ``head``, and
    ``determinant``: the one of the affine returned)."""
    import ants

    head = ants.image_read(str(templates.template_path("colin27_head"))).clone("float")
    head3 = ants.resample_image(head, (3, 3, 3), use_voxels=False, interp_type=0)
    native3 = ants.resample_image(working, (3, 3, 3), use_voxels=False, interp_type=0)
    head_affine = ants.registration(
        head3,
        native3,
        type_of_transform="Affine",
        aff_shrink_factors=(4, 2, 1),
        aff_smoothing_sigmas=(2, 1, 0),
        aff_iterations=(1000, 500, 100),
        outprefix=str(scratch / "head_"),
    )
    orientation = _orientation_check(head3, native3, head_affine["fwdtransforms"], scratch)
    mni3 = ants.resample_image(templates.ants_from_ras(tm["T1"], grid.MNI_AFFINE), (3, 3, 3), use_voxels=False, interp_type=0)
    mask3 = ants.resample_image_to_target(mni_mask, mni3, interp_type="nearestNeighbor").morphology("dilate", 2)
    brain = ants.registration(
        mni3,
        native3,
        mask=mask3,
        type_of_transform="Affine",
        initial_transform=head_affine["fwdtransforms"],
        aff_shrink_factors=(4, 2, 1),
        aff_smoothing_sigmas=(2, 1, 0),
        aff_iterations=(100, 50, 10),
        aff_random_sampling_rate=1.0,
        outprefix=str(scratch / "brain_"),
    )
    record = {
        **orientation,
        "head_determinant": _determinant(head_affine["fwdtransforms"][0]),
        "brain_determinant": _determinant(brain["fwdtransforms"][0]),
    }
    record["brain_to_head"] = record["brain_determinant"] / record["head_determinant"]
    if BRAIN_TO_HEAD_SCALE[0] <= record["brain_to_head"] <= BRAIN_TO_HEAD_SCALE[1]:
        return brain["fwdtransforms"], {**record, "used": "brain", "determinant": record["brain_determinant"]}
    return head_affine["fwdtransforms"], {**record, "used": "head", "determinant": record["head_determinant"]}


#: The head affine's fit (Mattes mutual information, more negative = better) of the scan as stored,
#: compared with the same registration of the scan mirrored: a mirrored scan that fits better by
#: more than this margin means the header has that axis reversed. Measured: real scans fit 0.09-0.24
#: better as stored; IXI012 mirrored front to back fits 0.14 better mirrored; the MNI152 T1 itself,
#: whose skull-to-skull fit stops in a poor optimum (-0.45), 0.07 better mirrored.
FLIP_MARGIN = 0.1


def _orientation_check(head3, native3, head_transforms: list[str], scratch: Path) -> dict[str, Any]:
    """Whether the scan's header has anterior and posterior (or superior and inferior) reversed:
    the skull-to-skull fit of the scan as stored against that of the scan flipped along the axis
    (an affine cannot undo a mirror image, so a reversed header fits clearly worse). Images at
    3 mm on grids with identity direction (LPS axes). Returns ``fit`` (mutual information, lower is
    better), ``flipped_fit`` per axis name and ``reversed_axis`` (None when the header is right)."""
    import ants

    def fit(moving, transforms) -> float:
        warped = ants.apply_transforms(head3, moving, transforms, interpolator="linear")
        return float(ants.image_similarity(head3, warped, metric_type="MattesMutualInformation"))

    record: dict[str, Any] = {"fit": fit(native3, head_transforms), "flipped_fit": {}, "reversed_axis": None}
    for axis, name in ((1, "anterior-posterior"), (2, "superior-inferior")):
        flipped = native3.new_image_like(np.ascontiguousarray(np.flip(native3.numpy(), axis=axis)))
        result = ants.registration(
            head3,
            flipped,
            type_of_transform="Affine",
            aff_shrink_factors=(4, 2),
            aff_smoothing_sigmas=(2, 1),
            aff_iterations=(500, 200),
            outprefix=str(scratch / f"flip{axis}_"),
        )
        record["flipped_fit"][name] = fit(flipped, result["fwdtransforms"])
        if record["flipped_fit"][name] < record["fit"] - FLIP_MARGIN and record["reversed_axis"] is None:
            record["reversed_axis"] = name
    return record


def _register_tissues(posteriors: np.ndarray, tm: dict[str, np.ndarray], settings: PreprocessSettings, scratch: Path) -> dict[str, Any]:
    """SyN of the subject's GM and WM maps (MNI grid after the affine; ``posteriors`` of shape
    (121, 145, 121, 3)) to the template's GM and WM maps, mean squares on both, on a grid of
    ``settings.syn_spacing_mm``. Returns ANTs' registration dict plus ``fixed`` (the grid of the
    warp)."""
    import ants

    def on_grid(data: np.ndarray):
        image = templates.ants_from_ras(data, grid.MNI_AFFINE)
        return ants.resample_image(image, (settings.syn_spacing_mm,) * 3, use_voxels=False, interp_type=0)

    fixed = on_grid(tm["GM"])
    registration = ants.registration(
        fixed,
        on_grid(posteriors[..., 1]),
        type_of_transform="SyNOnly",
        initial_transform="Identity",
        syn_metric="meansquares",
        syn_sampling=0,
        reg_iterations=settings.syn_iterations,
        multivariate_extras=[("meansquares", on_grid(tm["WM"]), on_grid(posteriors[..., 2]), 1, 0)],
        outprefix=str(scratch / "tissues_"),
    )
    return {**registration, "fixed": fixed}


def _write_outputs(out_dir: Path, gmd, gmv, t1_mni, transform_files: list[str], native, report, timings, stage_done) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (("gmd", gmd), ("gmv", gmv), ("t1_mni", t1_mni)):
        write_nifti_atomic(out_dir / f"{name}.nii.gz", np.asarray(data, dtype=np.float32), grid.MNI_AFFINE, f"BrainImageNet-AD {name}")
    staging = Path(tempfile.mkdtemp(prefix=".transforms.", dir=out_dir))
    for source, name in zip(
        transform_files, ("mni_to_native_warp.nii.gz", "mni_to_native_affine.mat", "native_to_mni_warp.nii.gz"), strict=True
    ):
        shutil.copyfile(source, staging / name)
    native_grid = {
        "size": list(native.shape),
        "spacing": list(native.spacing),
        "origin": list(native.origin),
        "direction": np.asarray(native.direction).tolist(),
        "convention": "ITK/ANTs physical space (LPS)",
    }
    (staging / "native_grid.json").write_text(json.dumps(native_grid, indent=2))
    target = out_dir / "transforms"
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    qc.write_overlay_png(out_dir / "qc_gmd.png", gmd, t1_mni, report)
    stage_done("write")
    report["seconds"] = {**timings, "total": round(sum(timings.values()), 2)}
    write_json_atomic(out_dir / "qc.json", report)
