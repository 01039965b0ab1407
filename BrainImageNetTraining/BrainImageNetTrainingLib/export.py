"""The end of a training run: pooled predictions and metrics, ROC plot, and the model bundle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from safetensors.torch import load_file

from BrainImageNetADLib.core.atomic import write_json_atomic
from BrainImageNetADLib.model.bundle import save_bundle
from BrainImageNetADLib.model.networks import build_network

from . import metrics
from .analysis import ad_analysis, write_predictions
from .cards import DEMO_USE, INTENDED_USE, model_card
from .manifest import Scan
from .runfolder import RunFolder
from .splits import Fold


class Run(Protocol):
    """What the end of a run reads from ``training.Run``: its settings (``TrainConfig``), scans,
    their targets, folds, run folder and the task of the base network."""

    config: Any
    scans: Sequence[Scan]
    targets: Sequence[float | None]
    folds: Sequence[Fold]
    folder: RunFolder
    base_task: str


def _task_metrics(task: str, targets: list[float | None], outputs: list[float]) -> dict[str, Any]:
    pairs = [(t, o) for t, o in zip(targets, outputs, strict=True) if t is not None]
    if not pairs:
        return {"n": 0}
    y, p = np.array([t for t, _ in pairs]), np.array([o for _, o in pairs])
    return metrics.regression_metrics(y, p) if task == "age" else metrics.binary_metrics(y, p)


def finish_run(run: Run, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``predictions.tsv``, ``metrics.json``, ``roc.png`` and ``bundle/`` into the run
    folder from the folds' results; return the metrics. Folds of a run without test folds
    (``folds == 0``) are scored on their validation scans instead."""
    config, scans, folder = run.config, run.scans, run.folder.path
    key = "test" if config.folds else "validation"
    fold_metrics, pooled_idx, pooled_out, pooled_fold, curves = [], [], [], [], {}
    for result in results:
        indices = [int(i) for i, _ in result[key]]
        outputs = [float(v) for _, v in result[key]]
        fold_metrics.append(
            {
                "fold": result["fold"],
                "test_groups": result["test_groups"],
                "best_epoch": result["best_epoch"],
                "best_val_loss": result["best_val_loss"],
                "target_scale": result["target_scale"],
                "metrics": _task_metrics(config.task, [run.targets[i] for i in indices], outputs),
            }
        )
        pooled_idx += indices
        pooled_out += outputs
        pooled_fold += [result["fold"]] * len(indices)
        labelled = [(run.targets[i], o) for i, o in zip(indices, outputs, strict=True) if run.targets[i] is not None]
        curves[f"fold {result['fold']}"] = (np.array([t for t, _ in labelled]), np.array([o for _, o in labelled]))
    write_predictions(folder / "predictions.tsv", [scans[i] for i in pooled_idx], pooled_out, pooled_fold)
    summary: dict[str, Any] = {
        "task": config.task,
        "scored_on": key,
        "folds": fold_metrics,
        "pooled": _task_metrics(config.task, [run.targets[i] for i in pooled_idx], pooled_out),
    }
    points: list[dict[str, float]] = []
    if config.task == "ad":
        summary["analysis"] = ad_analysis([scans[i] for i in pooled_idx], np.array(pooled_out))
        labelled = [(run.targets[i], o) for i, o in zip(pooled_idx, pooled_out, strict=True) if run.targets[i] is not None]
        points = metrics.operating_points(np.array([t for t, _ in labelled]), np.array([o for _, o in labelled]))
    if config.task != "age":
        ys = [run.targets[i] for i in pooled_idx if run.targets[i] is not None]
        ps = [o for i, o in zip(pooled_idx, pooled_out, strict=True) if run.targets[i] is not None]
        curves["pooled"] = (np.array(ys), np.array(ps))
        metrics.plot_roc(curves, folder / "roc.png", f"{config.task.upper()} classifier, {key} scans")
    write_json_atomic(folder / "metrics.json", summary)
    _export_bundle(run, fold_metrics, summary, points)
    return summary


def _export_bundle(run: Run, fold_metrics: list[dict[str, Any]], summary: dict[str, Any], points: list[dict[str, float]]) -> None:
    config, folder = run.config, run.folder.path
    models = []
    for entry in fold_metrics:
        model = build_network(config.architecture, config.preset, len(config.channels))
        model.load_state_dict(load_file(str(folder / f"fold{entry['fold']}" / "best.safetensors")))
        models.append(model.eval())
    trained_on = {run.scans[i].subject for f in run.folds for i in (*f.train, *f.validation) if run.targets[i] is not None}
    datasets, sites = sorted({s.dataset for s in run.scans}), sorted({s.site for s in run.scans})
    losses = [e["best_val_loss"] if e["best_val_loss"] is not None else np.inf for e in fold_metrics]
    presets = {"balanced": 0.5}
    screening = metrics.screening_threshold(points)
    if screening is not None:
        presets["screening"] = screening
    card = model_card(
        config.card_name or f"{config.preset}-{config.architecture}-{folder.name}",
        config.architecture,
        config.preset,
        list(config.channels),
        config.training_data
        or f"{len(run.scans)} scans ({len(trained_on)} training subjects) from {len(datasets)} datasets and {len(sites)} sites",
        demo=config.demo,
        trained=True,
        intended_use=(DEMO_USE if config.demo else "") + INTENDED_USE,
        folds=[dict(e) for e in fold_metrics],
        training_subjects=trained_on,
        metrics=summary["pooled"],
        operating_points=points,
        threshold_presets=presets,
        base_fold=int(np.argmin(losses)),
        training={
            "task": config.task,
            "base_task": run.base_task,
            "config": {k: v for k, v in config.to_dict().items() if k not in config.RESUMABLE},
            "datasets": datasets,
            "sites": sites,
        },
    )
    save_bundle(folder / "bundle", models, card)
