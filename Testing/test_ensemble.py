"""Ensemble prediction on real networks: averaging, determinism, batching, threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from BrainImageNetADLib import grid
from BrainImageNetADLib.bundle import load_fold_models
from BrainImageNetADLib.ensemble import Ensemble, classify
from BrainImageNetADLib.errors import InputError


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(3).random((3, 2, *grid.MODEL_SHAPE), dtype=np.float32)


def test_probability_is_the_mean_of_the_fold_models(tiny_bundle: Path, batch: np.ndarray) -> None:
    mean, per_fold = Ensemble.from_bundle(tiny_bundle).predict_proba(batch)
    _, models = load_fold_models(tiny_bundle)
    with torch.inference_mode():
        expected = np.stack([torch.sigmoid(m(torch.from_numpy(batch))).numpy() for m in models], axis=1)
    np.testing.assert_allclose(per_fold, expected, atol=1e-6)
    np.testing.assert_allclose(mean, expected.mean(axis=1), atol=1e-6)
    assert per_fold.shape == (3, 3) and np.all((mean > 0) & (mean < 1))


def test_prediction_is_deterministic_and_batch_size_invariant(tiny_bundle: Path, batch: np.ndarray) -> None:
    ensemble = Ensemble.from_bundle(tiny_bundle, threads=1)
    first, _ = ensemble.predict_proba(batch, batch_size=3)
    again, _ = ensemble.predict_proba(batch, batch_size=3)
    one_by_one, _ = ensemble.predict_proba(batch, batch_size=1)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, one_by_one, atol=1e-6)


def test_threshold_sets_label_and_operating_point(tiny_bundle: Path, batch: np.ndarray) -> None:
    ensemble = Ensemble.from_bundle(tiny_bundle)
    p = ensemble.predict(batch[0], threshold=0.5)
    assert p.label == ("AD" if p.probability >= 0.5 else "NC")
    assert (p.sensitivity, p.specificity) == pytest.approx((0.85, 0.90))
    below = classify(p.probability, p.fold_probabilities, ensemble.card, max(0.0, p.probability - 0.01))
    above = classify(p.probability, p.fold_probabilities, ensemble.card, min(1.0, p.probability + 0.01))
    assert below.label == "AD" and above.label == "NC"
    screening = classify(p.probability, p.fold_probabilities, ensemble.card, 0.2)
    assert screening.sensitivity == pytest.approx(0.95) and screening.specificity == pytest.approx(0.70)


def test_bad_arrays_are_rejected(tiny_bundle: Path, batch: np.ndarray) -> None:
    ensemble = Ensemble.from_bundle(tiny_bundle)
    with pytest.raises(InputError, match="expected input of shape"):
        ensemble.predict_proba(batch[:, :1])
    broken = batch.copy()
    broken[0, 0, 10, 10, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ensemble.predict_proba(broken)


def test_unavailable_devices_are_explained(tiny_bundle: Path) -> None:
    with pytest.raises(InputError, match="unknown device"):
        Ensemble.from_bundle(tiny_bundle, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available on this machine"):
            Ensemble.from_bundle(tiny_bundle, device="cuda:0")
