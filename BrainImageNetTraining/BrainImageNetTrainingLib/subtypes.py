"""AD subtypes from individualized risk maps (Lu et al. 2024): the risk maps of a manifest's AD
scans (``BrainImageNetADLib.explain.riskmap``) are clustered with k-means (squared Euclidean, inside the
grey-matter mask), k chosen at the elbow of the within-cluster sum of squares over k = 1..10
unless given; MCI scans go to the centre their map correlates with best (Pearson, inside the
mask), or stay unassigned when the two best correlations differ by less than a margin.

Outputs (``run_subtypes``), all written atomically into the output folder:
- ``risk_maps/``: one risk map per AD and MCI scan, kept so that an interrupted run resumes;
- ``subtype<N>_centre.nii.gz``: the mean risk map of subtype N's AD scans;
- ``assignments.tsv``: every AD and MCI scan with its subtype and correlations;
- ``subtypes.json``: settings, the elbow curve and a summary of each subtype;
- ``subtype_centres.png``: axial slices of the centres.
Every map is on the MNI 1.5 mm grid (121x145x121), in AD probability units (0-1), the template's
score outside the model grid.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.core.atomic import write_bytes_atomic, write_json_atomic, write_nifti_atomic
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.core.imageheader import read_nifti
from BrainImageNetADLib.core.progress import CancelCallback, ProgressCallback, check_cancel
from BrainImageNetADLib.explain.methods import RISK_METHODS
from BrainImageNetADLib.explain.occlusion import region_summary
from BrainImageNetADLib.explain.riskmap import RiskSettings, risk_map
from BrainImageNetADLib.model.bundle import load_risk_template
from BrainImageNetADLib.model.ensemble import Ensemble

from .data import MapStore
from .manifest import Scan, read_manifest

#: Diagnoses whose scans are assigned to the subtypes found among the AD scans.
MCI_DIAGNOSES = ("sMCI", "pMCI", "MCI")
#: Grey-matter probability above which a voxel takes part (the authors' mask threshold), for
#: bundles without an input mask of their own.
GM_MASK_THRESHOLD = 0.2


@dataclass(frozen=True)
class SubtypeSettings:
    """``k``: number of subtypes (None: the elbow over 1..``max_k``); ``margin``: a scan whose best
    centre correlates less than this (Pearson r) above the second best stays unassigned;
    ``restarts``: k-means initialisations (the best is kept); ``seed``: k-means' random state;
    ``risk``: cube geometry of the risk maps (voxels); ``method``: ``explain.methods.RISK_METHODS``;
    ``fold``: one fold network instead of the ensemble (None: all folds)."""

    k: int | None = None
    max_k: int = 10
    margin: float = 0.05
    restarts: int = 20
    seed: int = 0
    risk: RiskSettings = field(default_factory=RiskSettings)
    method: str = "incremental"
    fold: int | None = None


def elbow(inertia: list[float]) -> int:
    """The k (1-based) at the elbow of a decreasing curve of within-cluster sums of squares for
    k = 1..len(inertia): the point farthest below the straight line from the first to the last
    point, both axes scaled to [0, 1] (the "kneedle" criterion). Fewer than three points: 1."""
    if len(inertia) < 3 or inertia[0] <= inertia[-1]:
        return 1
    k = np.arange(len(inertia), dtype=float) / (len(inertia) - 1)
    drop = (inertia[0] - np.asarray(inertia, dtype=float)) / (inertia[0] - inertia[-1])
    return int(np.argmax(drop - k)) + 1


def correlations(maps: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Pearson correlation (S, K) of each map (S, V) with each centre (K, V)."""
    a = maps - maps.mean(axis=1, keepdims=True)
    b = centres - centres.mean(axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return a @ b.T


def cluster(maps: np.ndarray, settings: SubtypeSettings) -> tuple[np.ndarray, list[float], int]:
    """k-means of the AD scans' maps (S, V): returns labels (S,) numbered 0..k-1 by decreasing
    cluster size, the sum of squares for k = 1..max_k (empty when ``settings.k`` is given) and k."""
    from sklearn.cluster import KMeans

    def fit(k: int) -> KMeans:
        return KMeans(n_clusters=k, n_init=settings.restarts, random_state=settings.seed).fit(maps)

    inertia: list[float] = []
    if settings.k is None:
        fits = [fit(k) for k in range(1, min(settings.max_k, len(maps)) + 1)]
        inertia = [float(f.inertia_) for f in fits]
        k = elbow(inertia)
        labels = fits[k - 1].labels_
    else:
        k = settings.k
        labels = fit(k).labels_
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    return np.argsort(order)[labels], inertia, k


def _map_name(scan: Scan) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", scan.subject + (f"_{scan.session}" if scan.session else ""))
    return f"{name}.nii.gz"


def _write_map(path: Path, values: np.ndarray, fill: float, description: str) -> Path:
    return write_nifti_atomic(path, grid.uncrop_to_mni_grid(values, fill=fill), grid.MNI_AFFINE, description)


def _grey_matter_mask(ensemble: Ensemble) -> np.ndarray:
    """Voxels of the model grid (96, 120, 86) that the clustering uses: the bundle's input mask
    where it has one, else the MNI152 grey-matter probability above ``GM_MASK_THRESHOLD``."""
    if ensemble.input_mask is not None:
        return ensemble.input_mask > 0
    return grid.crop_to_model_grid(templates.mni_templates_on_grid()["GM"]) > GM_MASK_THRESHOLD


def subject_risk_maps(
    raw_template: np.ndarray,
    ensemble: Ensemble,
    scans: list[Scan],
    folder: Path,
    settings: SubtypeSettings,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> tuple[np.ndarray, float]:
    """Risk maps (S, 96, 120, 86) of ``scans`` on the model grid, for ``ensemble`` (or its fold
    ``settings.fold``) and its risk template ``raw_template`` (C, 96, 120, 86, as
    ``bundle.load_risk_template`` reads it), and the template's score (AD probability). Each map is kept
    in ``folder`` and read back on a later run with the same settings (recorded in
    ``folder/settings.json``; other settings are refused)."""
    if settings.method not in RISK_METHODS:
        raise InputError(f"a risk map is computed {', '.join(RISK_METHODS)}, not {settings.method}")
    models = ensemble.fold_models(settings.fold)
    mean, per_fold = ensemble.predict_proba(raw_template[None])
    score = float(mean[0] if settings.fold is None else per_fold[0, settings.fold])
    template = ensemble.prepare(raw_template[None])[0]
    recorded = {
        "model": ensemble.card.name,
        "weights": [f.get("sha256") for f in ensemble.card.data.get("folds", [])],
        "risk_template": (ensemble.card.risk_template or {}).get("sha256"),
        "cube": settings.risk.cube,
        "stride": settings.risk.stride,
        "method": settings.method,
        "fold": settings.fold,
    }
    settings_file = folder / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text(encoding="utf-8")) != recorded:
        raise InputError(f"{folder} holds risk maps made with other settings ({settings_file.name}); choose another --out")
    write_json_atomic(settings_file, recorded)
    names = [_map_name(s) for s in scans]
    clash = {n for n in names if names.count(n) > 1}
    if clash:
        raise InputError(f"two scans would share the risk map file {sorted(clash)[0]}; subject and session must be unique")
    store = MapStore(scans, ensemble.card.channels, cache=False)
    maps = np.zeros((len(scans), *grid.MODEL_SHAPE), np.float32)
    for i, (scan, name) in enumerate(zip(scans, names, strict=True)):
        check_cancel(should_cancel, "subtypes")
        path = folder / name
        if path.exists():
            maps[i] = grid.crop_to_model_grid(read_nifti(path)[0])
            continue

        def step(stage: str, fraction: float, i: int = i) -> None:
            if progress is not None:
                progress("subtypes: risk maps", (i + fraction) / len(scans))

        x = ensemble.prepare(store.one(i)[None])[0]
        maps[i] = risk_map(models, x, template, settings.risk, settings.method, None, step, should_cancel).risk
        _write_map(path, maps[i], score, f"risk map of {scan.subject}")
    return maps, score


def _stats(values: list[float | None]) -> dict[str, float | int | None]:
    known = [v for v in values if v is not None]
    return {
        "n": len(known),
        "mean": round(float(np.mean(known)), 2) if known else None,
        "sd": round(float(np.std(known, ddof=1)), 2) if len(known) > 1 else None,
    }


def _summary(number: int, members: list[Scan], assigned_mci: list[Scan], centre: np.ndarray, score: float, file: str) -> dict[str, Any]:
    """Size, the regions where the centre is highest, age and MMSE of one subtype's AD scans, and
    the MCI scans assigned to it (with the share of converters when the manifest tells)."""
    regions = region_summary(centre, top=200, centre=score)["top_regions"]
    highest = sorted(regions, key=lambda r: -r["mean"])[:5]
    converters = sum(s.diagnosis == "pMCI" for s in assigned_mci)
    stable = sum(s.diagnosis == "sMCI" for s in assigned_mci)
    return {
        "subtype": number,
        "ad_scans": len(members),
        "centre": file,
        "highest_regions": [{"name": r["name"], "mean": round(r["mean"], 4), "peak": round(r["peak"], 4)} for r in highest],
        "age": _stats([s.age for s in members]),
        "mmse": _stats([s.mmse for s in members]),
        "mci": {
            "assigned": len(assigned_mci),
            "pMCI": converters,
            "sMCI": stable,
            "conversion_share": round(converters / (converters + stable), 3) if converters + stable else None,
        },
    }


def subtype_figure(centres: np.ndarray, background: np.ndarray, score: float, path: Path, sizes: list[int]) -> Path:
    """PNG of the centres (K, 96, 120, 86), model grid: four axial slices each (z = -18, 0, 20 and
    40 mm MNI, radiological: the subject's right on the left) over ``background`` (the template's
    GMD), coloured red above and blue below the template's ``score``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    levels_mm = (-18, 0, 20, 40)
    z0 = grid.MODEL_AFFINE[2, 3]
    spread = max(float(np.abs(centres - score).max()), 1e-3)
    norm = TwoSlopeNorm(vcenter=score, vmin=max(0.0, score - spread), vmax=min(1.0, score + spread))
    fig, axes = plt.subplots(len(centres), len(levels_mm), figsize=(2.2 * len(levels_mm), 2.4 * len(centres)), squeeze=False)
    for row, centre in enumerate(centres):
        for col, z_mm in enumerate(levels_mm):
            z = int(round((z_mm - z0) / grid.MODEL_AFFINE[2, 2]))
            ax = axes[row][col]
            ax.imshow(np.rot90(background[:, :, z]), cmap="gray", vmin=0, vmax=1)
            shown = np.ma.masked_where(background[:, :, z] < GM_MASK_THRESHOLD, centre[:, :, z])
            image = ax.imshow(np.rot90(shown), cmap="RdBu_r", norm=norm, alpha=0.85)
            ax.set_axis_off()
            ax.set_title(f"z = {z_mm} mm", fontsize=8)
        axes[row][0].text(2, 10, "R", color="white", fontsize=8)
        axes[row][0].text(-8, grid.MODEL_SHAPE[1] / 2, f"subtype {row + 1}\n{sizes[row]} AD", fontsize=9, ha="right", va="center")
    fig.colorbar(image, ax=axes, shrink=0.6, label=f"AD probability (template {score:.2f})")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def run_subtypes(
    bundle: str | Path,
    manifest: str | Path,
    out: str | Path,
    settings: SubtypeSettings = SubtypeSettings(),
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> dict[str, Any]:
    """Subtypes of the AD scans of ``manifest`` for the AD ensemble of ``bundle`` (which needs a
    risk template), and the assignment of its MCI scans (sMCI, pMCI, MCI). Writes the outputs
    listed in the module docstring into ``out``; returns ``subtypes.json``'s content. Raises
    InputError for a manifest without AD scans, a k outside 1..number of AD scans, or risk maps
    in ``out`` made with other settings."""
    bundle, out = Path(bundle), Path(out)
    ensemble = Ensemble.from_bundle(bundle)
    raw_template = load_risk_template(bundle, ensemble.card)  # a clear error before any work
    scans = read_manifest(manifest)
    ad = [s for s in scans if s.diagnosis == "AD"]
    mci = [s for s in scans if s.diagnosis in MCI_DIAGNOSES]
    if not ad:
        raise InputError(f"{manifest}: no AD scans to find subtypes among")
    if settings.k is not None and not 1 <= settings.k <= len(ad):
        raise InputError(f"k = {settings.k} subtypes needs 1 <= k <= {len(ad)} (the AD scans)")
    if not 0 <= settings.margin < 2:
        raise InputError(f"the assignment margin is a difference of correlations, 0 to 2; got {settings.margin}")
    maps, score = subject_risk_maps(raw_template, ensemble, ad + mci, out / "risk_maps", settings, progress, should_cancel)
    mask = _grey_matter_mask(ensemble)
    check_cancel(should_cancel, "subtypes")
    labels, inertia, k = cluster(maps[: len(ad), mask], settings)
    centres = np.stack([maps[: len(ad)][labels == j].mean(axis=0) for j in range(k)])
    r = correlations(maps[:, mask].astype(np.float64), centres[:, mask].astype(np.float64))
    order = np.argsort(-r, axis=1)
    rows, assigned = [], {j: [] for j in range(k)}
    for i, scan in enumerate(ad + mci):
        best, second = order[i, 0], (order[i, 1] if k > 1 else None)
        margin = r[i, best] - r[i, second] if second is not None else None
        if i < len(ad):
            subtype: int | None = int(labels[i])
        else:
            subtype = int(best) if margin is None or margin >= settings.margin else None
            if subtype is not None:
                assigned[subtype].append(scan)
        rows.append(
            {
                "subject": scan.subject,
                "session": scan.session,
                "diagnosis": scan.diagnosis,
                "subtype": "unassigned" if subtype is None else subtype + 1,
                "best_subtype": best + 1,
                "best_r": f"{r[i, best]:.4f}",
                "second_subtype": "" if second is None else second + 1,
                "second_r": "" if second is None else f"{r[i, second]:.4f}",
                "age": "" if scan.age is None else scan.age,
                "mmse": "" if scan.mmse is None else scan.mmse,
            }
        )
    files = {}
    for j in range(k):
        files[j] = _write_map(out / f"subtype{j + 1}_centre.nii.gz", centres[j], score, f"AD subtype {j + 1} centre (risk map)").name
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out / "assignments.tsv", buffer.getvalue().encode())
    sizes = [int((labels == j).sum()) for j in range(k)]
    background = ensemble.prepare(raw_template[None])[0][0]
    subtype_figure(centres, background, score, out / "subtype_centres.png", sizes)
    summary = {
        "model": ensemble.card.name,
        "manifest": str(manifest),
        "settings": asdict(settings),
        "template_score": score,
        "mask_voxels": int(mask.sum()),
        "k": k,
        "k_chosen_by": "given" if settings.k is not None else "elbow of the sum of squares over k = 1..max_k",
        "sum_of_squares": inertia,
        "ad_scans": len(ad),
        "mci_scans": len(mci),
        "mci_unassigned": len(mci) - sum(len(v) for v in assigned.values()),
        "subtypes": [
            _summary(j + 1, [s for s, lab in zip(ad, labels, strict=True) if lab == j], assigned[j], centres[j], score, files[j])
            for j in range(k)
        ],
        "files": {"assignments": "assignments.tsv", "figure": "subtype_centres.png", "risk_maps": "risk_maps/"},
    }
    write_json_atomic(out / "subtypes.json", summary)
    return summary
