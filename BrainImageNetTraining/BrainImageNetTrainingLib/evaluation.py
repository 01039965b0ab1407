"""Evaluation of AD ensembles on independent scans, in the layout of the paper's Table 2.

Several bundles can be compared on the same manifest (inputs GMD / GMV / GMD+GMV, base model
sex / age / none): one table row per bundle and dataset. A bundle's card holds one-way digests
of its training subjects; a manifest that shares a subject with it is refused (LeakageError).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from BrainImageNetADLib.core.atomic import write_bytes_atomic, write_json_atomic
from BrainImageNetADLib.core.errors import BundleError
from BrainImageNetADLib.core.progress import CancelCallback, ProgressCallback, check_cancel
from BrainImageNetADLib.model.bundle import ModelCard
from BrainImageNetADLib.model.ensemble import Ensemble

from . import metrics
from .analysis import ad_analysis, write_predictions
from .cards import subject_digest
from .data import MapStore
from .manifest import Scan, read_manifest
from .splits import LeakageError

TABLE_COLUMNS = ("model", "input", "base", "dataset", "samples", "accuracy", "sensitivity", "specificity", "auc")


def check_independent(card: ModelCard, scans: Sequence[Scan]) -> None:
    """Raise LeakageError when a scan's subject is among the card's training subjects."""
    trained = set(card.data.get("training_subjects_sha256", []))
    shared = sorted({s.subject for s in scans if subject_digest(s.subject) in trained})
    if shared:
        raise LeakageError(
            f"{len(shared)} subjects were used to train {card.name} (e.g. {', '.join(shared[:3])}); evaluate on independent subjects only"
        )


def _base_of(card: ModelCard) -> str:
    return str(card.data.get("training", {}).get("base_task") or "none")


def _rows(card: ModelCard, scans: Sequence[Scan], probabilities: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    rows = []
    datasets = sorted({s.dataset for s in scans})
    for dataset in [*datasets, "all"] if len(datasets) > 1 else datasets:
        mask = np.array([dataset in ("all", s.dataset) and s.diagnosis in ("AD", "NC") for s in scans])
        if not mask.any():
            continue
        labels = np.array([s.diagnosis == "AD" for s in scans])[mask].astype(int)
        m = metrics.binary_metrics(labels, probabilities[mask], threshold)
        rows.append(
            {
                "model": card.name,
                "input": "+".join(card.channels),
                "base": _base_of(card),
                "dataset": dataset,
                "samples": m["n"],
                **{k: m[k] for k in ("accuracy", "sensitivity", "specificity", "auc")},
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``TABLE_COLUMNS`` (fractions shown as percentages, AUC with 3 digits)."""

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "n/a"
        if key in ("accuracy", "sensitivity", "specificity"):
            return f"{100 * value:.1f}%"
        if key == "auc":
            return f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(k, row[k]) for k in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def evaluate(
    bundles: Sequence[str | Path],
    manifest: str | Path,
    out: str | Path,
    threshold: float = 0.5,
    device: str = "cpu",
    permutations: int = 10_000,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> dict[str, Any]:
    """Score every scan of ``manifest`` with each bundle's ensemble and write into ``out``:
    ``predictions_<k>.tsv`` (one per bundle), ``table.md`` (Table 2 layout), ``roc.png`` and
    ``evaluation.json`` (table rows and, per bundle, the MCI, MMSE and field-strength analyses).
    """
    out = Path(out)
    scans = read_manifest(manifest)
    ensembles = [Ensemble.from_bundle(b, device) for b in bundles]
    for ensemble in ensembles:
        if ensemble.card.architecture not in ("ad_transfer", "ad_intact"):
            raise BundleError(f"{ensemble.card.name}: evaluate needs an AD model, not a {ensemble.card.architecture} network")
        check_independent(ensemble.card, scans)
    rows: list[dict[str, Any]] = []
    analyses, curves = [], {}
    total = len(ensembles) * len(scans)
    for k, ensemble in enumerate(ensembles):
        store = MapStore(scans, ensemble.card.channels, cache=False)
        probabilities = np.zeros(len(scans))
        for i in range(len(scans)):
            check_cancel(should_cancel, "evaluation")
            probabilities[i] = ensemble.predict_proba(store.get([i]).numpy())[0][0]
            if progress is not None:
                progress(f"{ensemble.card.name} scan {i + 1}/{len(scans)}", (k * len(scans) + i + 1) / total)
        write_predictions(out / f"predictions_{k}.tsv", scans, probabilities.tolist(), ["ensemble"] * len(scans))
        rows += _rows(ensemble.card, scans, probabilities, threshold)
        analyses.append({"model": ensemble.card.name, **ad_analysis(scans, probabilities, threshold, permutations)})
        adnc = np.array([s.diagnosis in ("AD", "NC") for s in scans])
        curves[ensemble.card.name] = (np.array([s.diagnosis == "AD" for s in scans])[adnc].astype(int), probabilities[adnc])
    result = {"manifest": str(manifest), "threshold": threshold, "table": rows, "analyses": analyses}
    write_bytes_atomic(out / "table.md", format_table(rows).encode())
    metrics.plot_roc(curves, out / "roc.png", "AD vs NC, independent scans")
    write_json_atomic(out / "evaluation.json", result)
    return result
