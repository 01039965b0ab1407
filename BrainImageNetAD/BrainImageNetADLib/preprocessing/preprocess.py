"""T1 preprocessing: a raw T1 in native space to GMD and GMV maps on the MNI 1.5 mm grid.

The maps are meant to be those SPM12's Segment writes (``wc1``/``mwc1``), which the paper's
networks were trained on. Stages (ANTsPy and numpy): read and validate -> affine to the Colin27
head (3 mm), then affine of the brain to the MNI152 2009 T1 inside its brain mask (3 mm) -> N4
bias correction (low resolution, field applied at full resolution; the corrected T1 is the one
shown in MNI space and measured by QC) -> segmentation of the scan as read, in its own space (its
own voxels; the 1 mm working grid if they are finer than 0.9 mm) with SPM12's six
tissue priors (``segment``), moved onto the scan as SPM moves them (``deformation``): the brain
affine refined by the affine under which the scan's intensities are most probable, then a
smooth displacement fitted on the same likelihood, with SPM's bias field fitted on it too
(``bias_field``, the only bias correction the segmentation sees, as in SPM); probabilities are
stored in steps of 1/255 as SPM stores ``c1`` -> GM written to MNI by pushing native voxels through that mapping (``normalise``): GMD = the GM
share of each MNI voxel, GMV = the pushed GM volume (native mm^3 per MNI mm^3) -> QC.

``transforms/`` keeps the mapping: its affine part (MNI points to native points) and the
displacement on top of it as an ANTs displacement field in native space (``native_warp.nii.gz``),
with which heat maps and atlas labels go from the model grid to the patient's grid exactly where
the segmentation placed the priors. The other direction (``t1_mni.nii.gz``, for QC and display,
and ``transforms.native_to_mni``) takes the affine, then the displacement negated
(``native_warp_inverse.nii.gz``): the first-order inverse, exact up to the displacement's change
over its own length (it is smooth on a 3 mm lattice). The registration's checks and thresholds:
docs/decisions/registration-checks.md.
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

from ..core import grid, templates
from ..core.atomic import remove_leftovers, replace_dir, write_json_atomic, write_nifti_atomic
from ..core.progress import PREPROCESSING_STAGES, CancelCallback, ProgressCallback, check_cancel
from . import bias_field, deformation, normalise, qc, segment
from .t1io import T1Image, read_t1
from .transforms import affine_matrix

REGISTRATION_SEED = 20220421

#: Files a finished preprocessing folder holds; ``qc.json`` is written last.
OUTPUT_FILES = ("gmd.nii.gz", "gmv.nii.gz", "gm_native.nii.gz", "t1_mni.nii.gz", "transforms", "qc_gmd.png", "qc.json")


@dataclass(frozen=True)
class PreprocessSettings:
    """Settings of a preset (times for 2 cores: docs/performance.md): N4 fitting grid (mm); EM iterations
    of the mixture at the start and after each later step; spacing of the voxels the mixture and
    the mapping are fitted on (mm; SPM samples every 3 mm); rounds of the likelihood affine;
    rounds of the displacement, steps in each, and its stiffness (``deformation``); steps of the
    bias field after each fit of the mixture (``bias_field``)."""

    name: str
    n4_spacing_mm: float
    first_iterations: int
    later_iterations: int
    fit_spacing_mm: int
    affine_rounds: int
    deformation_rounds: int
    deformation_steps: int
    stiffness: float
    bias_steps: int


PRESETS = {
    "fast": PreprocessSettings("fast", 3.0, 30, 10, 3, 2, 6, 15, 1.5, 3),
    "accurate": PreprocessSettings("accurate", 2.0, 50, 20, 3, 3, 8, 20, 1.5, 3),
}

#: EM iterations of the mixture after each step of the bias field.
BIAS_ITERATIONS = 5

#: Margin around the priors' brain (GM + WM + CSF > 0.01) of the box that is segmented (voxels
#: of the scan): wide enough to take in the scalp and the neck, the whole field of view over which
#: SPM fits its class weights.
BOX_MARGIN = 40


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

    Writes ``gmd.nii.gz`` and ``gmv.nii.gz`` (121x145x121, MNI 1.5 mm, SPM's grid), ``gm_native.nii.gz``
    (GM probability in the scan's space, on the grid it was segmented on, like SPM's ``c1``), ``t1_mni.nii.gz``,
    ``transforms/`` (ANTs files plus ``native_grid.json``), ``qc_gmd.png`` and ``qc.json`` last.
    Each file is written atomically. ``progress(stage, fraction)`` is called at each stage;
    ``should_cancel()`` is polled between stages and stops the run with ``Cancelled``. A scan
    whose tissue contrast is not a T1's is refused with ``ContrastRefused`` during segmentation,
    before anything is written.
    """
    import ants

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    settings = PRESETS[preset]
    # Fixed seed and one ITK thread: registration is then reproducible (the same scan gives the
    # same maps); multi-threaded metric sums differ between runs and can change the optimum.
    ants.config.set_ants_deterministic(True, seed_value=REGISTRATION_SEED)
    out_dir = Path(out_dir)
    remove_leftovers(out_dir)
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
        return _run_stages(t1_path, t1, working, out_dir, settings, Path(scratch), timings, stage_done)


def _run_stages(
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

    segmented = _segmentation_image(native, working)
    tissues, box, positions, to_mni, model, displacement, steps, levels = _segment(segmented, brain_affine, settings)
    gm_native = ants.decrop_image(box.new_image_like(tissues[..., 0]), segmented.new_image_like(np.zeros(segmented.shape, np.float32)))
    stage_done("segment")

    coordinates = positions @ grid.MNI_AFFINE[:3, :3].T.astype(np.float32) + grid.MNI_AFFINE[:3, 3].astype(np.float32)
    del positions
    warped, modulated, density = normalise.warped_maps(tissues[..., :3], coordinates, float(np.prod(box.spacing)))
    del coordinates
    matrix = _mni_to_native(box, to_mni)
    mni_to_native = _write_affine(matrix, scratch / "mni_to_native.mat")
    # transforms/ as it is kept: file name -> the file written to scratch.
    mapping = {"mni_to_native_affine.mat": mni_to_native}
    for name, field in (("native_warp.nii.gz", displacement), ("native_warp_inverse.nii.gz", -displacement)):
        mapping[name] = str(scratch / name)
        ants.image_write(_native_warp(box, field, steps, matrix), mapping[name])
    t1_mni = ants.apply_transforms(
        templates.mni_grid_reference(), corrected, [mapping["native_warp_inverse.nii.gz"], mni_to_native], interpolator="linear"
    ).numpy()
    affine_scale = float(abs(np.linalg.det(matrix[:3, :3])))
    gmd, gmv = warped[..., 0], modulated[..., 0]
    stage_done("normalise")

    report = qc.assess(
        gmd=gmd,
        posteriors=warped[..., [2, 0, 1]],
        jacobian=density,
        t1_mni=t1_mni,
        templates_on_grid=tm,
        tissue_model=model.summary(),
        tissue_levels=levels,
        used_head_affine=affine_record["used"] == "head",
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
    _write_outputs(out_dir, gmd, gmv, gm_native, t1_mni, mapping, native, report, timings, stage_done)
    return report


#: Accepted range of the brain-to-brain affine's volume change relative to the skull-to-skull one
#: (determinant ratio), between where the brain step works and where it diverges on atrophied
#: brains: docs/decisions/registration-checks.md.
BRAIN_TO_HEAD_SCALE = (0.7, 1.3)


def _determinant(transform_file: str) -> float:
    """Volume scale (absolute determinant) of an ANTs affine file."""
    return float(abs(np.linalg.det(affine_matrix(transform_file)[:3, :3])))


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
#: more than this margin means the header has that axis reversed (docs/decisions/registration-checks.md).
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


def _segment(corrected, brain_affine: list[str], settings: PreprocessSettings):
    """Segment the T1 (ANTs image in native space, see ``_segmentation_image``) with SPM12's
    tissue priors moved onto it (``deformation``): the brain affine, refined by the affine under
    which the scan is most probable (``settings.affine_rounds`` rounds, each followed by EM
    iterations of the mixture), then a displacement (``settings.deformation_rounds`` rounds),
    all fitted on voxels ``settings.fit_spacing_mm`` apart, with a bias field fitted after each
    fit of the mixture (``bias_field``).

    Returns the class posteriors (X, Y, Z, 6) float32, the ANTs image of the box they cover (a
    crop of the native grid around the priors' brain), the MNI voxel position of each box voxel
    (X, Y, Z, 3) float32, the 4x4 matrix of the affine part (box voxel indices to MNI voxel
    indices), the fitted ``segment.MixtureModel``, the displacement of the lattice the mapping was
    fitted on ((x, y, z, 3) MNI voxels), that lattice's step in box voxels per axis, and the
    intensities of the tissues that the first mixture and the affinely placed priors agree on
    (``qc.tissue_levels``). Raises ``ContrastRefused`` right after that first mixture when those
    intensities are not a T1's (``qc.refuse_other_contrast``)."""
    tpm = templates.spm_tissue_priors()
    sampler = deformation.PriorSampler(tpm)
    intracranial = templates.ants_from_ras(tpm[..., :3].sum(axis=-1), grid.MNI_AFFINE)
    box = _prior_box(corrected, intracranial, brain_affine)
    to_mni = _box_to_mni_voxels(box, affine_matrix(brain_affine[0]))
    intensities = box.numpy().astype(np.float64)
    steps = tuple(max(1, round(settings.fit_spacing_mm / float(spacing))) for spacing in box.spacing)
    lattice = intensities[:: steps[0], :: steps[1], :: steps[2]]
    lattice_ijk = np.moveaxis(np.indices(lattice.shape), 0, -1) * np.array(steps)

    def lattice_positions() -> np.ndarray:
        return lattice_ijk @ to_mni[:3, :3].T + to_mni[:3, 3]

    positions = lattice_positions()
    # Fitted on the voxels with signal inside the priors' field of view: beyond it the priors say
    # nothing (docs/decisions/registration-checks.md).
    in_view = ((positions >= 0) & (positions <= np.array(grid.MNI_SHAPE) - 1)).all(axis=-1)
    valid = (lattice > 0) & in_view
    bias = bias_field.BiasField(box.shape, tuple(float(s) for s in box.spacing), steps)

    def corrected_lattice(mask: np.ndarray = valid) -> np.ndarray:
        return lattice[mask] * np.exp(bias.log_on_lattice()[mask])

    def fit(priors: np.ndarray, model: segment.MixtureModel, iterations: int) -> segment.MixtureModel:
        model = segment.fit_mixture(corrected_lattice(), priors, model, iterations)
        for _ in range(settings.bias_steps):
            bias.step(lattice, valid, priors, model)
            model = segment.fit_mixture(corrected_lattice(), priors, model, BIAS_ITERATIONS)
        return model

    seen_priors = sampler.priors(positions[in_view])
    p = seen_priors[lattice[in_view] > 0]  # the priors at the valid voxels, in the same order
    model = fit(p, segment.initial_model(lattice[valid], p), settings.first_iterations)
    # Tissue contrast is read here, where the priors sit where the contrast-blind affine put them:
    # the later fits move them to wherever the scan looks most like a T1, and so would a FLAIR's.
    # Voxels without signal are kept so that CSF set to 0 reads as black, not as missing.
    seen = corrected_lattice(in_view)
    lattice_mm3 = float(np.prod(np.array(steps) * np.array(box.spacing)))
    levels = qc.tissue_levels(seen, segment.posteriors(seen, seen_priors, model), seen_priors, lattice_mm3)
    qc.refuse_other_contrast(levels)
    for _ in range(settings.affine_rounds):
        likelihoods = deformation.class_likelihoods(corrected_lattice(), model)
        to_mni = deformation.fit_affine(positions[valid], likelihoods, model.weights, sampler) @ to_mni
        positions = lattice_positions()
        model = fit(sampler.priors(positions[valid]), model, settings.later_iterations)
    displacement = np.zeros(positions.shape)
    lattice_mm = float(np.mean(np.array(steps) * np.array(box.spacing)))
    for _ in range(settings.deformation_rounds):
        displacement, moved_priors = deformation.fit_displacement(
            positions,
            valid,
            deformation.class_likelihoods(corrected_lattice(), model),
            model.weights,
            sampler,
            displacement,
            lattice_mm,
            settings.stiffness,
            settings.deformation_steps,
        )
        model = fit(moved_priors, model, settings.later_iterations)
    full = _full_positions(box.shape, to_mni, displacement, steps)
    tissues = segment.posteriors(intensities * bias.on_box(), _priors_at(sampler, full), model)
    tissues[intensities <= 0] = np.eye(len(segment.CLASSES), dtype=np.float32)[segment.CLASSES.index("air")]
    # Stored as SPM stores its c1..c6 (steps of 1/255): probabilities below 1/510 become 0, so that
    # the maps are 0 away from the tissue, as SPM's are (and occlusion skips cubes without brain).
    return np.round(tissues * 255.0) / 255.0, box, full, to_mni, model, displacement, steps, levels


def _native_warp(box, displacement: np.ndarray, steps, mni_to_native: np.ndarray):
    """The displacement (lattice (X, Y, Z, 3), MNI voxels, one lattice voxel every ``steps`` voxels
    of the ANTs image ``box``) as an ANTs displacement field on that lattice in native space: with
    the affine ``mni_to_native`` (4x4, LPS mm) inverted after it, a native point x goes to MNI as
    the segmentation placed it, inverse(A)(x + w(x)), so w is the displacement in MNI mm (LPS)
    under A's linear part."""
    import ants

    linear = mni_to_native[:3, :3] @ (_LPS_TO_RAS @ grid.MNI_AFFINE)[:3, :3]
    return ants.from_numpy(
        (displacement @ linear.T).astype(np.float32),
        origin=list(box.origin),
        spacing=[float(a) * b for a, b in zip(box.spacing, steps, strict=True)],
        direction=np.asarray(box.direction),
        has_components=True,
    )


def _priors_at(sampler: deformation.PriorSampler, positions: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """The priors at ``positions`` (X, Y, Z, 3 MNI voxels): (X, Y, Z, 6) float32, ``chunk`` voxels at a time."""
    flat = positions.reshape(-1, 3)
    out = np.empty((len(flat), len(segment.CLASSES)), dtype=np.float32)
    for start in range(0, len(flat), chunk):
        out[start : start + chunk] = sampler.priors(flat[start : start + chunk])
    return out.reshape(*positions.shape[:3], len(segment.CLASSES))


#: Scans with voxels at least this size (mm, every axis) are segmented on their own grid; finer
#: ones on the 1 mm working grid, which bounds time and memory.
NATIVE_GRID_MIN_MM = 0.9


def _segmentation_image(native, working):
    """The T1 to segment, as read (both grids hold float32): on the scan's own voxels when none
    is finer than ``NATIVE_GRID_MIN_MM`` (as SPM does; docs/decisions/prior-mapping.md has the
    figures), else on the 1 mm working grid. Its intensity bias is
    left to the field fitted inside the mixture (``bias_field``): N4 applied first lowered
    agreement with SPM's maps on every real scan (docs/decisions/bias-field.md)."""
    return native if min(native.spacing) >= NATIVE_GRID_MIN_MM else working


def _box_to_lps(box) -> np.ndarray:
    """4x4 matrix taking voxel indices of the ANTs image ``box`` to physical points (LPS mm)."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(box.direction) @ np.diag(box.spacing)
    matrix[:3, 3] = box.origin
    return matrix


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _box_to_mni_voxels(box, mni_to_native: np.ndarray) -> np.ndarray:
    """4x4 matrix taking voxel indices of ``box`` to MNI voxel indices (the 121x145x121 grid),
    given the affine ``mni_to_native`` (4x4, MNI points to native points, LPS mm)."""
    return np.linalg.inv(grid.MNI_AFFINE) @ _LPS_TO_RAS @ np.linalg.inv(mni_to_native) @ _box_to_lps(box)


def _mni_to_native(box, to_mni: np.ndarray) -> np.ndarray:
    """The inverse of ``_box_to_mni_voxels``: MNI points to native points (4x4, LPS mm)."""
    return _box_to_lps(box) @ np.linalg.inv(to_mni) @ np.linalg.inv(grid.MNI_AFFINE) @ _LPS_TO_RAS


def _full_positions(shape, to_mni: np.ndarray, displacement: np.ndarray, steps) -> np.ndarray:
    """MNI voxel position (X, Y, Z, 3) float32 of every voxel of a box of ``shape``: the affine
    ``to_mni`` plus the lattice ``displacement`` interpolated (lattice every ``steps`` voxels).
    Trilinear, where SPM uses cubic B-splines (the same maps: docs/decisions/registration-checks.md)."""
    from scipy import ndimage

    out = np.empty((*shape, 3), dtype=np.float32)
    ijk = np.indices(shape, dtype=np.float32)
    lattice_ijk = ijk / np.array(steps, dtype=np.float32)[:, None, None, None]
    for a in range(3):
        out[..., a] = np.tensordot(to_mni[a, :3], ijk, axes=1) + to_mni[a, 3]
        out[..., a] += ndimage.map_coordinates(displacement[..., a], lattice_ijk, order=1, mode="nearest")
    return out


def _prior_box(image, intracranial, to_native: list[str]):
    """The crop of ``image`` that holds the priors' brain (``intracranial``: ANTs image of the
    priors' GM + WM + CSF on the MNI grid; > 0.01) with a margin of ``BOX_MARGIN`` voxels, the
    priors placed by the affine ``to_native`` (ANTs transform list, MNI points to native points)."""
    import ants

    moved = ants.apply_transforms(image, intracranial, to_native, whichtoinvert=[True] * len(to_native)).numpy()
    inside = np.argwhere(moved > 0.01)
    if inside.size == 0:
        raise RuntimeError("the tissue priors do not overlap the scan after the affine: registration failed")
    low = np.maximum(inside.min(axis=0) - BOX_MARGIN, 0)
    high = np.minimum(inside.max(axis=0) + BOX_MARGIN + 1, image.shape)
    return ants.crop_indices(image, low.tolist(), high.tolist())


def _write_affine(matrix: np.ndarray, path: Path) -> str:
    """Write the 4x4 affine ``matrix`` (LPS mm) as an ANTs affine file; returns its path."""
    import ants

    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=matrix[:3, :3], translation=matrix[:3, 3], center=(0.0, 0.0, 0.0)
    )
    ants.write_transform(transform, str(path))
    return str(path)


def _write_outputs(out_dir: Path, gmd, gmv, gm_native, t1_mni, mapping: dict[str, str], native, report, timings, stage_done) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (("gmd", gmd), ("gmv", gmv), ("t1_mni", t1_mni)):
        write_nifti_atomic(out_dir / f"{name}.nii.gz", np.asarray(data, dtype=np.float32), grid.MNI_AFFINE, f"BrainImageNet-AD {name}")
    write_nifti_atomic(out_dir / "gm_native.nii.gz", gm_native.numpy(), templates.ras_affine(gm_native), "BrainImageNet-AD GM, scan space")
    staging = Path(tempfile.mkdtemp(prefix=".transforms.", dir=out_dir))
    for name, path in mapping.items():
        shutil.copyfile(path, staging / name)
    native_grid = {
        "size": list(native.shape),
        "spacing": list(native.spacing),
        "origin": list(native.origin),
        "direction": np.asarray(native.direction).tolist(),
        "convention": "ITK/ANTs physical space (LPS)",
    }
    (staging / "native_grid.json").write_text(json.dumps(native_grid, indent=2))
    replace_dir(staging, out_dir / "transforms")
    qc.write_overlay_png(out_dir / "qc_gmd.png", gmd, t1_mni, report)
    stage_done("write")
    report["seconds"] = {**timings, "total": round(sum(timings.values()), 2)}
    write_json_atomic(out_dir / "qc.json", report)
