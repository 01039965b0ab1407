"""Group-level occlusion maps, as in the paper: over a set of independent AD and NC scans, how
much the ensemble's accuracy drops when one cube of every scan is masked, cube by cube; and the
mean drop in AD probability over the AD scans. Each subject's cubes are computed exactly by the
incremental method of ``BrainImageNetADLib.explain.occlusion``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.atomic import write_bytes_atomic, write_json_atomic, write_nifti_atomic
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.core.progress import CancelCallback, ProgressCallback
from BrainImageNetADLib.explain.occlusion import OcclusionSettings, accumulate, cube_positions, occlusion_map, region_summary
from BrainImageNetADLib.model.ensemble import Ensemble

from .data import MapStore, target
from .evaluation import check_independent
from .manifest import Scan, read_manifest


def group_occlusion(
    bundle: str | Path,
    manifest: str | Path,
    out: str | Path,
    settings: OcclusionSettings | None = None,
    threshold: float = 0.5,
    fold: int | None = None,
    max_scans: int | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> dict[str, Any]:
    """Group occlusion of the AD and NC scans of ``manifest`` (independent of the bundle's
    training subjects) for the ensemble of ``bundle`` (or its fold model ``fold``), at
    ``threshold``, with the cube geometry of ``settings`` (default: the paper's). ``max_scans`` takes that many scans, alternating AD and NC. Writes into ``out``
    ``accuracy_drop.nii.gz`` and ``ad_probability_drop.nii.gz`` (MNI 1.5 mm grid, 121x145x121;
    accuracy and probability units, averaged over covering cubes), ``cubes.tsv`` and
    ``group_occlusion.json`` (figures and region summaries); returns the JSON's content."""
    out = Path(out)
    settings = settings or OcclusionSettings()
    ensemble = Ensemble.from_bundle(bundle)
    scans = read_manifest(manifest)
    check_independent(ensemble.card, scans)
    models = ensemble.fold_models(fold)
    chosen = _alternate([i for i, s in enumerate(scans) if target(s, "ad") is not None], scans, max_scans)
    if not chosen:
        raise InputError(f"{manifest}: no AD or NC scans to occlude")
    store = MapStore(scans, ensemble.card.channels, cache=False)
    positions = cube_positions(settings.cube, settings.stride)
    labels = np.array([target(scans[i], "ad") for i in chosen], dtype=bool)
    base = np.zeros(len(chosen))
    occluded = np.zeros((len(chosen), len(positions)))
    seconds = 0.0
    for k, i in enumerate(chosen):
        report = None if progress is None else _scaled(progress, k, len(chosen), scans[i].subject)
        result = occlusion_map(
            models, ensemble.prepare(store.one(i)[None])[0], settings, positions=positions, progress=report, should_cancel=should_cancel
        )
        base[k], occluded[k] = result.probability, result.probability - result.drops
        seconds += result.seconds
    correct = (base >= threshold) == labels
    correct_occluded = (occluded >= threshold) == labels[:, None]
    accuracy_drop = correct.mean() - correct_occluded.mean(axis=0)
    ad_drop = (base[labels, None] - occluded[labels]).mean(axis=0) if labels.any() else np.zeros(len(positions))
    maps = {
        "accuracy_drop": accumulate(accuracy_drop, positions, settings.cube),
        "ad_probability_drop": accumulate(ad_drop, positions, settings.cube),
    }
    for name, importance in maps.items():
        write_nifti_atomic(out / f"{name}.nii.gz", grid.uncrop_to_mni_grid(importance), grid.MNI_AFFINE, f"group {name.replace('_', ' ')}")
    _write_cubes(out / "cubes.tsv", positions, accuracy_drop, ad_drop)
    summary = {
        "bundle": str(bundle),
        "model": ensemble.card.name,
        "fold": fold,
        "manifest": str(manifest),
        "threshold": threshold,
        "scans": {"AD": int(labels.sum()), "NC": int((~labels).sum())},
        "accuracy": float(correct.mean()),
        "settings": {"cube_mm": settings.cube * 1.5, "stride_mm": settings.stride * 1.5, "mask_value": settings.mask_value},
        "seconds_per_scan": seconds / len(chosen),
        "regions": {name: region_summary(importance) for name, importance in maps.items()},
    }
    write_json_atomic(out / "group_occlusion.json", summary)
    return summary


def _alternate(indices: list[int], scans: list[Scan], limit: int | None) -> list[int]:
    if limit is None or limit >= len(indices):
        return indices
    ad = [i for i in indices if scans[i].diagnosis == "AD"]
    nc = [i for i in indices if scans[i].diagnosis == "NC"]
    mixed = [i for pair in zip(ad, nc, strict=False) for i in pair] + ad[len(nc) :] + nc[len(ad) :]
    return sorted(mixed[:limit])


def _scaled(progress: ProgressCallback, k: int, n: int, subject: str) -> ProgressCallback:
    return lambda stage, fraction: progress(f"scan {k + 1}/{n} ({subject}) {stage}", (k + fraction) / n)


def _write_cubes(path: Path, positions: np.ndarray, accuracy_drop: np.ndarray, ad_drop: np.ndarray) -> None:
    lines = ["i\tj\tk\taccuracy_drop\tad_probability_drop"]
    lines += [f"{i}\t{j}\t{m}\t{a:.6f}\t{d:.6f}" for (i, j, m), a, d in zip(positions.tolist(), accuracy_drop, ad_drop, strict=True)]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
