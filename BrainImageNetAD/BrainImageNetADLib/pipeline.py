"""One case from a T1 (or its SPM maps) to a result: the one place where this happens.

``run_case`` preprocesses the T1 in its own process (``worker.run_isolated``), checks its QC,
scores the maps with the ensemble, writes the atlas regions and the heat map, and writes
``out_dir/result.json`` (``CaseResult.to_json``) atomically. The command line
(``brainimagenet-ad predict``) and the child process of both skins (``case_process``) call it;
the cohort runner preprocesses many T1s at once and calls ``score_case`` for each.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.atomic import remove_leftovers, write_json_atomic, write_nifti_atomic
from .core.errors import InputError
from .core.progress import CancelCallback, ProgressCallback, check_cancel
from .explain.methods import RISK_METHODS
from .model.prediction import Prediction

if TYPE_CHECKING:
    import numpy as np

    from .model.ensemble import Ensemble

#: Heat-map kinds of one case and the key of ``result.json`` that holds each: the occlusion map
#: (drop in AD probability when a cube is masked) and the risk map (``riskmap``: AD probability of
#: the model's template with one cube taken from the subject).
HEAT_MAP_KEYS = {"occlusion": "occlusion", "risk": "risk_map"}
#: Heat-map choices of both skins: name -> (label, kind, method, fold model or None for all).
HEAT_MAPS = {
    "ensemble": ("Occlusion, whole ensemble (exact)", "occlusion", "incremental", None),
    "approximate": ("Occlusion, whole ensemble (approximate, about 4x faster)", "occlusion", "approximate", None),
    "fold": ("Occlusion, first fold model (about 5x faster)", "occlusion", "incremental", 0),
    "gradient": ("Gradient x input (seconds, a preview)", "occlusion", "gradient", None),
    "risk": ("Risk map, whole ensemble (exact)", "risk", "incremental", None),
    "risk-approximate": ("Risk map, whole ensemble (approximate preview)", "risk", "approximate", None),
    "none": ("No heat map", "occlusion", "none", None),
}
#: Title of an occlusion map's colour legend.
OCCLUSION_LEGEND = "Drop in AD probability when masked"
#: The maps preprocessing writes into its folder, by channel.
MAP_FILES = {"GMD": "gmd.nii.gz", "GMV": "gmv.nii.gz"}


@dataclass
class CaseOptions:
    """What a case run computes.

    preset: preprocessing preset ("fast" or "accurate"); heat_map: a kind of ``HEAT_MAP_KEYS``;
    method: one of ``explain.methods.OCCLUSION_METHODS`` or "none"; fold: map one fold model instead of the
    whole ensemble (about 5x faster); cube, step: heat-map cube side and step in 1.5 mm voxels
    (step None: the kind's default); batch_size: cube positions computed together; force:
    predict even when preprocessing QC fails; threshold: decision threshold on the AD
    probability (None: the card's "balanced" preset); device: torch device ("cpu", "auto",
    "cuda:1", "mps"); threads: CPU threads for torch (None: torch's choice); engine: "torch",
    "openvino" or None (openvino on a CPU where installed); precision: "f32" or "bf16".
    """

    preset: str = "fast"
    heat_map: str = "occlusion"
    method: str = "incremental"
    fold: int | None = None
    cube: int = 12
    step: int | None = None
    batch_size: int = 16
    force: bool = False
    threshold: float | None = None
    device: str = "cpu"
    threads: int | None = None
    engine: str | None = None
    precision: str = "f32"

    @classmethod
    def for_heat_map(cls, name: str, force: bool = False, device: str = "cpu") -> CaseOptions:
        """Options of a ``HEAT_MAPS`` choice (``force``: predict even when QC fails; ``device``: a
        torch device name)."""
        _, kind, method, fold = HEAT_MAPS[name]
        return cls(heat_map=kind, method=method, fold=fold, force=force, device=device)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> CaseOptions:
        return cls(**content)


@dataclass
class HeatMap:
    """A case's heat map: ``kind`` ("occlusion" or "risk"), ``method``, ``fold`` (None: all fold
    models), ``units`` and ``legend`` (text), ``centre`` (the value meaning "no effect": 0 for
    occlusion, the template's AD probability for a risk map), ``seconds`` it took, ``stats`` of
    the computation, ``regions`` (per-AAL-region summary, ``occlusion.region_summary``) and
    ``files`` ("mni": the map on the 121x145x121 MNI grid; "native": on the T1's grid, with a
    T1), names in the case's folder."""

    kind: str
    method: str
    fold: int | None
    units: str
    legend: str
    centre: float
    seconds: float
    stats: dict[str, Any]
    regions: dict[str, Any]
    files: dict[str, str]


@dataclass
class CaseResult(Prediction):
    """The result of one case, as ``result.json`` holds it: the ensemble's ``Prediction``
    (probability, logit, fold probabilities, label, sensitivity and specificity at the threshold,
    the model's name and use), and ``version`` of the library, the ``model_bundle`` path,
    ``channels`` and ``threshold_presets`` of its card, how it ran (``engine``, ``precision``),
    ``input_checks`` of the maps, ``qc``: the preprocessing verdict, failures, warnings, measures
    and volumes (None for maps given as input), ``heat_map`` (None when none was made),
    ``regions_native`` or ``regions_mni``: the file of hippocampal labels in the case's folder,
    and ``seconds`` of the run.
    """

    version: str
    model_bundle: str
    engine: str
    precision: str
    channels: list[str]
    threshold_presets: dict[str, float]
    input_checks: dict[str, Any]
    qc: dict[str, Any] | None = None
    heat_map: HeatMap | None = None
    regions_native: str | None = None
    regions_mni: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``result.json`` content: the fields, with the heat map under its kind's key of
        ``HEAT_MAP_KEYS``."""
        content = dataclasses.asdict(self)
        heat_map = content.pop("heat_map")
        if heat_map is not None:
            content[HEAT_MAP_KEYS[heat_map["kind"]]] = heat_map
        return content

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> CaseResult:
        """Read ``to_json``'s content back; InputError when fields are missing or unknown."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"heat_map"}
        values = {k: v for k, v in content.items() if k in fields}
        heat_maps = [content[key] for key in HEAT_MAP_KEYS.values() if content.get(key)]
        try:
            return cls(**values, heat_map=HeatMap(**heat_maps[0]) if heat_maps else None)
        except TypeError as error:
            raise InputError(f"not a result of this version: {error}") from error

    @classmethod
    def read(cls, path: str | Path) -> CaseResult:
        """Read a ``result.json``; InputError when it is unreadable or not a result."""
        try:
            content = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: unreadable result ({error})") from error
        if not isinstance(content, dict):
            raise InputError(f"{path}: not a result")
        return cls.from_json(content)

    def files(self) -> set[str]:
        """The names of the files in the case's folder that this result lists."""
        listed = set(self.heat_map.files.values()) if self.heat_map else set()
        return {name for name in listed | {self.regions_native, self.regions_mni} if name and "/" not in name}


def preprocess_case(t1: Path, out_dir: Path, preset: str, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Preprocess ``t1`` into ``out_dir`` in a child process (a crash in ANTs/ITK never takes the
    caller down); return the QC report (``preprocess.preprocess_t1``)."""
    from .core.worker import run_isolated
    from .preprocessing.preprocess import preprocess_t1

    return run_isolated(preprocess_t1, t1, out_dir, preset, progress=progress)


def score_case(
    paths: dict[str, Path],
    out_dir: Path,
    ensemble: Ensemble,
    bundle: Path,
    options: CaseOptions,
    qc_report: dict[str, Any] | None = None,
    preprocessing: Path | None = None,
    outlines: bool = True,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
    start: float | None = None,
) -> CaseResult:
    """Score the maps ``paths`` ({"GMD": wc1, "GMV": mwc1}, MNI grid) with ``ensemble``
    (``ensemble.Ensemble`` of the bundle folder ``bundle``) into ``out_dir``: the prediction at ``options.threshold``, the
    hippocampal outlines (``outlines``; on the T1's grid when ``preprocessing`` is the folder of
    its preprocessing, else on the MNI grid), the heat map of ``options``; write ``result.json``
    atomically, remove the files an earlier result in the folder listed and this one does not,
    and return the result. ``qc_report``: the preprocessing report, None for maps given as input;
    ``start``: ``time.perf_counter()`` when the case began (default: now), for ``seconds``."""
    from . import __version__
    from .model.maps import load_model_input

    start = time.perf_counter() if start is None else start
    out_dir.mkdir(parents=True, exist_ok=True)
    threshold = ensemble.card.threshold(options.threshold)
    x, checks = load_model_input(paths, ensemble.card.channels)
    prediction = ensemble.predict(x, threshold)
    if progress is not None:
        progress("ensemble", 1.0)
    result = CaseResult(
        version=__version__,
        **prediction.to_dict(),
        model_bundle=str(Path(bundle).resolve()),
        engine=ensemble.engine,
        precision=ensemble.precision,
        channels=ensemble.card.channels,
        threshold_presets=ensemble.card.threshold_presets,
        input_checks=checks,
        qc=None if qc_report is None else {k: qc_report[k] for k in ("verdict", "failures", "warnings", "measures", "volumes_ml")},
    )
    if outlines and preprocessing is not None:
        from .explain.atlas import write_native_regions

        result.regions_native = write_native_regions(preprocessing, out_dir / "regions_native.nii.gz").name
    elif outlines:
        from .explain.atlas import write_mni_regions

        result.regions_mni = write_mni_regions(out_dir / "regions_mni.nii.gz").name
    if options.method != "none":
        check_cancel(should_cancel, "prediction")
        result.heat_map = heat_map(ensemble, bundle, ensemble.prepare(x[None])[0], out_dir, options, preprocessing, progress, should_cancel)
    result.seconds = round(time.perf_counter() - start, 3)
    path = out_dir / "result.json"
    try:
        previous = CaseResult.read(path).files() if path.is_file() else set()
    except InputError:
        previous = set()
    write_json_atomic(path, result.to_json())
    for name in previous - result.files():  # a rerun into a used folder: no stale heat map beside the new result
        (out_dir / name).unlink(missing_ok=True)
    return result


def heat_map(
    ensemble: Ensemble,
    bundle: Path,
    x: np.ndarray,
    out_dir: Path,
    options: CaseOptions,
    preprocessing: Path | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> HeatMap:
    """The heat map of ``options`` (kind, method, fold, cube, step) of ``ensemble`` (a risk map
    uses the template of its bundle folder ``bundle``) from maps ``x`` (C, 96, 120,
    86) with the bundle's input conventions applied (``Ensemble.prepare``): ``occlusion.nii.gz``
    or ``risk_map.nii.gz`` on the MNI grid in ``out_dir``, and ``*_native.nii.gz`` on the T1's
    grid when ``preprocessing`` is the folder of the T1's preprocessing."""
    from .core import grid
    from .explain.occlusion import OcclusionSettings, occlusion_map, region_summary
    from .preprocessing.transforms import write_native

    models = ensemble.fold_models(options.fold)
    batch = max(1, options.batch_size)
    if options.cube < 1 or (options.step is not None and options.step < 1):
        raise InputError("the heat map's cube and step must be at least 1 voxel")
    if options.heat_map == "risk":
        from .explain.riskmap import RiskSettings, risk_map
        from .model.bundle import load_risk_template

        if options.method not in RISK_METHODS:
            raise InputError(f"a risk map is computed {', '.join(RISK_METHODS)}, not {options.method}")
        template = ensemble.prepare(load_risk_template(bundle, ensemble.card)[None])[0]
        settings = RiskSettings(cube=options.cube, stride=options.step or RiskSettings.stride, batch_size=batch)
        risk = risk_map(models, x, template, settings, options.method, progress=progress, should_cancel=should_cancel)
        values, centre, seconds, stats, name = risk.risk, risk.template_score, risk.seconds, risk.stats, "risk_map"
        units = "AD probability of the risk template with the cube taken from the subject, mean over covering cubes"
        legend = f"AD probability, subject's cube in the template (template: {centre:.2f})"
    else:
        settings = OcclusionSettings(cube=options.cube, stride=options.step or OcclusionSettings.stride, batch_size=batch)
        occlusion = occlusion_map(models, x, settings, options.method, progress=progress, should_cancel=should_cancel)
        values, centre, seconds, stats, name = occlusion.importance, 0.0, occlusion.seconds, occlusion.stats, "occlusion"
        units = "drop in AD probability when the cube is masked (gradient: gradient x input)"
        legend = OCCLUSION_LEGEND
    files = {
        "mni": write_nifti_atomic(
            out_dir / f"{name}.nii.gz", grid.uncrop_to_mni_grid(values, fill=centre), grid.MNI_AFFINE, f"AD {name}"
        ).name
    }
    if preprocessing is not None:
        files["native"] = write_native(values, preprocessing, out_dir / f"{name}_native.nii.gz", fill=centre).name
    return HeatMap(
        kind=options.heat_map,
        method=options.method,
        fold=options.fold,
        units=units,
        legend=legend,
        centre=centre,
        seconds=round(seconds, 2),
        stats=stats,
        regions=region_summary(values, centre=centre),
        files=files,
    )


def run_case(
    source: Path | dict[str, Path],
    out_dir: str | Path,
    bundle: str | Path,
    options: CaseOptions | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> CaseResult:
    """Run one case into ``out_dir`` and return its result (also in ``out_dir/result.json``).

    ``source``: a T1 image (file or DICOM folder; preprocessed into ``out_dir/preprocessing`` in
    a child process) or SPM maps {"GMD": wc1, "GMV": mwc1} on the MNI grid; ``bundle``: a model
    bundle folder. What an interrupted run left in ``out_dir`` is removed first. Raises InputError
    when the bundle or the input is unusable, or when preprocessing QC fails (unless
    ``options.force``); Cancelled when ``should_cancel()`` says so between stages.
    """
    from .model.ensemble import Ensemble

    start = time.perf_counter()
    options = options or CaseOptions()
    out_dir, bundle = Path(out_dir), Path(bundle)
    ensemble = Ensemble.from_bundle(bundle, options.device, options.threads, options.engine, options.precision)
    remove_leftovers(out_dir)
    qc_report = preprocessing = None
    if isinstance(source, dict):
        paths = dict(source)
    else:
        preprocessing = out_dir / "preprocessing"
        qc_report = preprocess_case(Path(source), preprocessing, options.preset, progress)
        if qc_report["verdict"] == "fail" and not options.force:
            raise InputError(
                f"preprocessing QC failed: {'; '.join(qc_report['failures'])} (see {preprocessing / 'qc_gmd.png'}; --force predicts anyway)"
            )
        paths = {channel: preprocessing / name for channel, name in MAP_FILES.items()}
    check_cancel(should_cancel, "prediction")
    return score_case(paths, out_dir, ensemble, bundle, options, qc_report, preprocessing, True, progress, should_cancel, start)
