"""Risk maps (reverse occlusion): the incremental method equals full passes of the template with
one cube taken from the subject, the authors' geometry, and how cube values become the map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import BundleError, Cancelled
from BrainImageNetADLib.core.resources import default_bundle
from BrainImageNetADLib.explain.occlusion import cube_positions
from BrainImageNetADLib.explain.riskmap import RiskSettings, risk_map
from BrainImageNetADLib.model.bundle import load_risk_template, read_card
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetADLib.model.networks import build_network
from BrainImageNetBench.speed import signal_preserving_init


def spread(positions: np.ndarray, n: int) -> np.ndarray:
    return positions[np.linspace(0, len(positions) - 1, n).round().astype(int)]


def maps(seed: int) -> np.ndarray:
    """Two random channels on the model grid, zero outside a box (as maps are outside the brain)."""
    x = np.zeros((2, *grid.MODEL_SHAPE), np.float32)
    x[:, 10:86, 12:108, 8:78] = np.random.default_rng(seed).random((2, 76, 96, 70), dtype=np.float32)
    return x


def test_the_authors_geometry_gives_1980_cubes_covering_the_grid() -> None:
    settings = RiskSettings()
    positions = cube_positions(settings.cube, settings.stride)
    assert len(positions) == 12 * 15 * 11 == 1980
    assert (settings.cube * 1.5, settings.stride * 1.5) == (18.0, 12.0)


@pytest.mark.parametrize("architecture", ["ad_transfer", "sex"])
def test_incremental_equals_full_passes_of_the_template_with_one_subject_cube(architecture: str) -> None:
    models = [signal_preserving_init(build_network(architecture, "tiny", 2), seed=s) for s in (3, 4)]
    x, template = 3 * maps(0), maps(1)  # the subject's cubes far from the template's values
    positions = spread(cube_positions(12, 8), 12)
    fast = risk_map(models, x, template, RiskSettings(batch_size=5), positions=positions)
    naive = risk_map(models, x, template, RiskSettings(batch_size=5), "naive", positions=positions)
    assert np.abs(naive.values - naive.template_score).max() > 1e-4  # the cubes matter: equality is informative
    np.testing.assert_allclose(fast.values, naive.values, rtol=0, atol=1e-5)
    assert fast.template_score == pytest.approx(naive.template_score, abs=1e-6)
    assert fast.stats["share_of_naive_macs"] < 0.3


def test_cubes_where_subject_and_template_agree_take_the_template_score() -> None:
    model = signal_preserving_init(build_network("ad_transfer", "tiny", 2), seed=5)
    x, template = maps(2), maps(3)
    positions = np.array([[0, 0, 0], [84, 108, 74], [40, 50, 30], [48, 50, 30]])  # two corners outside the box, two inside
    result = risk_map([model], x, template, positions=positions)
    assert result.computed.tolist() == [False, False, True, True]
    assert (result.values[:2] == result.template_score).all()
    assert result.risk[0, 0, 0] == pytest.approx(result.template_score, abs=1e-6)
    assert result.risk[42, 52, 32] == pytest.approx(result.values[2], abs=1e-6)
    assert result.risk[50, 52, 32] == pytest.approx(result.values[2:].mean(), abs=1e-6)  # covered by both
    assert result.risk[20, 100, 5] == pytest.approx(result.template_score, abs=1e-6)  # covered by none


def test_progress_reaches_one_cancel_stops_and_bad_input_is_refused() -> None:
    model = signal_preserving_init(build_network("ad_transfer", "tiny", 2), seed=6)
    x, template = maps(4), maps(5)
    seen: list[tuple[str, float]] = []
    risk_map(
        [model],
        x,
        template,
        RiskSettings(batch_size=2),
        positions=spread(cube_positions(12, 8), 6),
        progress=lambda s, f: seen.append((s, f)),
    )
    assert seen[-1] == ("risk model 1/1", pytest.approx(1.0))
    with pytest.raises(Cancelled):
        risk_map([model], x, template, should_cancel=lambda: True)
    with pytest.raises(ValueError, match="shape"):
        risk_map([model], x, template[:1])
    with pytest.raises(ValueError, match="unknown method"):
        risk_map([model], x, template, method="gradient")


def test_the_shipped_demo_bundle_scores_its_risk_template_at_one_half() -> None:
    ensemble = Ensemble.from_bundle(default_bundle(), engine="torch")
    template = load_risk_template(default_bundle(), ensemble.card)
    score = float(ensemble.predict_proba(template[None])[0][0])
    assert abs(score - 0.5) <= 0.01
    assert score == pytest.approx(ensemble.card.risk_template["score"], abs=1e-5)


def test_risk_template_is_made_from_the_bundles_training_scans(tmp_path: Path) -> None:
    from test_training import run_train_cli

    from BrainImageNetTrainingLib.synth import write_cohort

    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle(), bundle)
    (bundle / "risk_template.safetensors").unlink()
    card = json.loads((bundle / "model_card.json").read_text())
    del card["risk_template"]
    (bundle / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="has no risk template.*brainimagenet-train risk-template"):
        load_risk_template(bundle, read_card(bundle))
    # the demo's training cohort starts with these subjects (same generator, seed and sites)
    ran = run_train_cli("risk-template", "--model", bundle, "--manifest", write_cohort(tmp_path / "train", 24, 10, 3, seed=0))
    assert ran.returncode == 0, ran.stderr
    entry = read_card(bundle).risk_template
    assert abs(entry["score"] - 0.5) <= 0.01 and "AD" in entry["made"]
    ensemble = Ensemble.from_bundle(bundle, engine="torch")
    assert float(ensemble.predict_proba(load_risk_template(bundle, ensemble.card)[None])[0][0]) == pytest.approx(entry["score"], abs=1e-5)
    # scans the bundle never saw are not its training data
    other = run_train_cli("risk-template", "--model", bundle, "--manifest", write_cohort(tmp_path / "other", 6, 2, 1, seed=5))
    assert other.returncode == 2 and "found 0 AD and 0 NC" in other.stderr


def test_predict_writes_the_five_fold_risk_map_centred_on_the_template(tmp_path: Path, sample: dict[str, Path]) -> None:
    from test_cli import run_cli

    ran = run_cli("predict", "--gmd", sample["GMD"], "--gmv", sample["GMV"], "--out", tmp_path, "--heat-map", "risk")
    assert ran.returncode == 0, ran.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    section = result["risk_map"]
    assert "occlusion" not in result and section["kind"] == "risk" and section["method"] == "incremental"
    assert section["centre"] == pytest.approx(read_card(default_bundle()).risk_template["score"], abs=1e-4)
    assert section["stats"]["positions"] == 1980 and (section["stats"]["cube_mm"], section["stats"]["stride_mm"]) == (18.0, 12.0)
    image = nib.load(str(tmp_path / section["files"]["mni"]))
    risk = np.asarray(image.dataobj)
    assert image.shape == grid.MNI_SHAPE and risk[0, 0, 0] == pytest.approx(section["centre"], abs=1e-6)  # no brain: the template's score
    assert np.abs(risk - section["centre"]).max() > 0.01 and ((risk >= 0) & (risk <= 1)).all()
    assert len(section["regions"]["hippocampal"]) == 4
    fold = np.array(result["fold_probabilities"])
    assert result["logit"] == pytest.approx(float(np.mean(np.log(fold / (1 - fold)))), abs=1e-9)


def test_a_risk_map_needs_a_template_and_an_occlusion_method(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    from test_cli import run_cli

    from conftest import assert_input_error

    maps = ("--gmd", sample["GMD"], "--gmv", sample["GMV"])
    assert_input_error(run_cli("predict", *maps, "--model", tiny_bundle, "--out", tmp_path, "--heat-map", "risk"), "has no risk template")
    gradient = run_cli("predict", *maps, "--out", tmp_path / "g", "--heat-map", "risk", "--occlusion", "gradient")
    assert_input_error(gradient, "a risk map is computed incremental, approximate, naive, not gradient")


def test_approximate_risk_map_computes_a_fraction_and_follows_the_exact_one(sample: dict[str, Path]) -> None:
    from BrainImageNetADLib.model.maps import load_model_input

    ensemble = Ensemble.from_bundle(default_bundle(), engine="torch")  # trained: its risk map has structure
    template = ensemble.prepare(load_risk_template(default_bundle(), ensemble.card)[None])[0]
    x = ensemble.prepare(load_model_input(sample, ["GMD", "GMV"])[0][None])[0]
    exact = risk_map(ensemble.models[:1], x, template)
    fast = risk_map(ensemble.models[:1], x, template, method="approximate")
    assert fast.stats["computed_positions"] < 0.4 * exact.stats["computed_positions"]
    np.testing.assert_allclose(fast.values[fast.computed], exact.values[fast.computed], rtol=0, atol=1e-5)
    inside = exact.risk != exact.template_score
    assert np.corrcoef(fast.risk[inside], exact.risk[inside])[0, 1] > 0.9


def test_bench_risk_times_naive_exact_and_approximate_side_by_side() -> None:
    from BrainImageNetBench.speed import bench_risk

    rows, last = bench_risk(["tiny"], positions=3, batch=8, folds=2)
    row = rows[0]
    assert row["cubes"] == 1980 and 0 < row["computed_cubes"] <= 1980
    assert row["speedup"] > 1 and row["share_of_naive_macs"] < 0.2 and row["approx_2fold_min"] < row["exact_2fold_min"]
    assert np.isfinite(row["approx_max_abs_diff"]) and last.startswith("exact ")
