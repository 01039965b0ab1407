"""The paper's analyses of AD scores: AD vs NC metrics, MCI progression, MMSE, field strength."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from BrainImageNetADLib.core.atomic import write_bytes_atomic

from . import metrics
from .manifest import Scan

PREDICTION_COLUMNS = ("subject", "session", "dataset", "site", "field_strength", "diagnosis", "sex", "age", "mmse", "fold", "output")


def write_predictions(path: str | Path, scans: Sequence[Scan], outputs: Sequence[float], folds: Sequence[int | str]) -> Path:
    """Write one row per scan (``PREDICTION_COLUMNS``) as TSV; ``output`` is the model's
    probability (or age in years), ``fold`` the model that scored it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for scan, output, fold in zip(scans, outputs, folds, strict=True):
        writer.writerow(
            [scan.subject, scan.session, scan.dataset, scan.site, scan.field_strength or "", scan.diagnosis, scan.sex]
            + [scan.age if scan.age is not None else "", scan.mmse if scan.mmse is not None else "", fold, f"{output:.6f}"]
        )
    return write_bytes_atomic(path, buffer.getvalue().encode())


def ad_analysis(scans: Sequence[Scan], probabilities: np.ndarray, threshold: float = 0.5, permutations: int = 10_000) -> dict[str, Any]:
    """AD analyses of scans with AD probabilities (shape (N,)) at ``threshold``:

    - ``ad_vs_nc``: accuracy, sensitivity, specificity, AUC on the AD and NC scans;
    - ``mci``: share of pMCI and of sMCI scans predicted AD, and the AUC of pMCI vs sMCI;
    - ``mmse``: Spearman correlation of the probability with MMSE (all scans with an MMSE);
    - ``field_strength``: accuracy on AD/NC scans per field strength, with a permutation test.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    diagnosis = np.array([s.diagnosis for s in scans])
    adnc = np.isin(diagnosis, ["AD", "NC"])
    labels = (diagnosis == "AD").astype(int)
    result: dict[str, Any] = {"threshold": threshold, "ad_vs_nc": metrics.binary_metrics(labels[adnc], probabilities[adnc], threshold)}
    pmci, smci = diagnosis == "pMCI", diagnosis == "sMCI"
    mci: dict[str, Any] = {"n_pmci": int(pmci.sum()), "n_smci": int(smci.sum())}
    mci["pmci_predicted_ad"] = float((probabilities[pmci] >= threshold).mean()) if pmci.any() else None
    mci["smci_predicted_ad"] = float((probabilities[smci] >= threshold).mean()) if smci.any() else None
    either = pmci | smci
    mci["auc_pmci_vs_smci"] = (
        metrics.binary_metrics(pmci[either].astype(int), probabilities[either], threshold)["auc"] if either.any() else None
    )
    result["mci"] = mci
    with_mmse = np.array([s.mmse is not None for s in scans])
    result["mmse"] = metrics.spearman(probabilities[with_mmse], np.array([s.mmse for s in scans if s.mmse is not None]))
    strengths = np.array([str(s.field_strength) if s.field_strength is not None else "" for s in scans])
    known = adnc & (strengths != "")
    correct = ((probabilities >= threshold).astype(int) == labels).astype(int)
    result["field_strength"] = metrics.permutation_test(correct[known], strengths[known], permutations)
    return result
