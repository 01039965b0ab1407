"""Ensemble prediction on real networks: averaging, determinism, batching, threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.model.bundle import load_fold_models
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetADLib.model.networks import build_network
from BrainImageNetADLib.model.prediction import classify


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


@pytest.mark.parametrize(("architecture", "preset"), [("ad_transfer", "tiny"), ("ad_transfer", "small"), ("sex", "tiny"), ("age", "tiny")])
def test_openvino_engine_gives_the_torch_outputs(architecture: str, preset: str, batch: np.ndarray) -> None:
    """The OpenVINO graph written from our modules (batch norm and residual scales folded in, TF
    'same' padding) gives PyTorch's outputs for every architecture, including trained-like batch norms."""
    from BrainImageNetADLib.model.bundle import ModelCard
    from conftest import make_card, randomise_batch_norm

    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = build_network(architecture, preset, 2)
        randomise_batch_norm(model, seed)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm3d):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.normal_(0.0, 0.1)
        models.append(model.eval())
    card = ModelCard(make_card(architecture, preset))
    reference = Ensemble(card, models, engine="torch").run(batch)
    fast = Ensemble(card, models, engine="openvino", threads=2).run(batch)
    assert fast.shape == reference.shape == (3, 2)
    np.testing.assert_allclose(fast, reference, atol=1e-5, rtol=0)
    assert np.ptp(reference) > 1e-3  # the outputs differ between inputs and folds: a real comparison


def test_engine_choices_are_checked(tiny_bundle: Path) -> None:
    assert Ensemble.from_bundle(tiny_bundle).engine == "openvino"  # the default on a CPU where installed
    with pytest.raises(InputError, match="unknown engine"):
        Ensemble.from_bundle(tiny_bundle, engine="tensorrt")
    with pytest.raises(InputError, match="unknown precision"):
        Ensemble.from_bundle(tiny_bundle, precision="f16")
