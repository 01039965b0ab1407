"""Occlusion maps: the incremental method equals masking + full forward passes, cubes cover the
grid, skipping and batching, progress/cancel, region summaries, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_cli import run_cli

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.core.errors import Cancelled
from BrainImageNetADLib.core.resources import default_bundle
from BrainImageNetADLib.explain.occlusion import (
    OcclusionSettings,
    changed_boxes,
    changing_cubes,
    cube_positions,
    occlusion_map,
    region_summary,
)
from BrainImageNetADLib.model.bundle import load_fold_models
from BrainImageNetADLib.model.networks import build_network
from BrainImageNetBench.speed import signal_preserving_init


def spread(positions: np.ndarray, n: int) -> np.ndarray:
    """``n`` positions spread over the list, both ends included (grid corners and edges)."""
    return positions[np.linspace(0, len(positions) - 1, n).round().astype(int)]


def test_cubes_cover_every_voxel_with_the_paper_geometry() -> None:
    positions = cube_positions()
    assert len(positions) == 15 * 19 * 14  # about 4,000 cubes of 18 mm in 9 mm steps
    covered = np.zeros(grid.MODEL_SHAPE, bool)
    for i, j, m in positions:
        covered[i : i + 12, j : j + 12, m : m + 12] = True
    assert covered.all()
    assert positions.max(axis=0).tolist() == [d - 12 for d in grid.MODEL_SHAPE]


@pytest.mark.parametrize("architecture", ["ad_transfer", "sex"])
def test_incremental_equals_masking_and_full_forward(architecture: str) -> None:
    model = signal_preserving_init(build_network(architecture, "tiny", 2), seed=3)
    x = np.random.default_rng(0).random((2, *grid.MODEL_SHAPE), dtype=np.float32)
    positions = spread(cube_positions(), 14)
    settings = OcclusionSettings(batch_size=5)
    fast = occlusion_map([model], x, settings, positions=positions)
    naive = occlusion_map([model], x, settings, "naive", positions=positions)
    assert np.abs(naive.drops).max() > 1e-4  # the cubes matter (10x the tolerance), so equality is informative
    np.testing.assert_allclose(fast.drops, naive.drops, rtol=0, atol=1e-5)
    assert fast.stats["share_of_naive_macs"] < 0.2


def test_masking_one_channel_only_is_exact_too() -> None:
    model = signal_preserving_init(build_network("ad_transfer", "tiny", 2), seed=4)
    x = np.random.default_rng(1).random((2, *grid.MODEL_SHAPE), dtype=np.float32)
    settings = OcclusionSettings(mask_value=0.5, channels=(1,), batch_size=4)
    positions = spread(cube_positions(), 6)
    fast = occlusion_map([model], x, settings, positions=positions)
    naive = occlusion_map([model], x, settings, "naive", positions=positions)
    np.testing.assert_allclose(fast.drops, naive.drops, rtol=0, atol=1e-5)


def test_empty_cubes_are_skipped_and_score_zero(sample: dict[str, Path]) -> None:
    from BrainImageNetADLib.model.maps import load_model_input

    x, _ = load_model_input(sample, ["GMD", "GMV"])
    positions = cube_positions()
    changing = changing_cubes(x, positions, OcclusionSettings())
    assert 0 < changing.sum() < len(positions)
    model = signal_preserving_init(build_network("ad_transfer", "tiny", 2), seed=5)
    picked = np.concatenate([positions[~changing][:3], positions[changing][:3]])
    result = occlusion_map([model], x, positions=picked)
    assert result.stats["computed_positions"] == 3
    assert (result.drops[:3] == 0).all()


def test_cubes_at_the_edge_of_the_brain_compute_their_changed_box_and_stay_exact(sample: dict[str, Path]) -> None:
    from BrainImageNetADLib.model.maps import load_model_input

    x, _ = load_model_input(sample, ["GMD", "GMV"])
    positions = cube_positions()
    _, size = changed_boxes(x, positions, OcclusionSettings())
    edge = positions[(size.prod(axis=1) > 12**3 // 2) & (size.prod(axis=1) < 12**3)]
    assert len(edge) > 100  # brain ends inside many cubes
    picked = np.concatenate([spread(edge, 6), spread(positions[size.prod(axis=1) == 12**3], 4)])
    model = load_fold_models(default_bundle())[1][0]  # a trained network: drops well above rounding
    settings = OcclusionSettings(batch_size=4)
    fast = occlusion_map([model], x, settings, positions=picked)
    naive = occlusion_map([model], x, settings, "naive", positions=picked)
    assert np.abs(naive.drops[:6]).max() > 1e-4  # well above the 1e-5 tolerance below
    np.testing.assert_allclose(fast.drops, naive.drops, rtol=0, atol=1e-5)


def test_approximate_map_computes_a_fraction_and_follows_the_exact_one(sample: dict[str, Path]) -> None:
    from BrainImageNetADLib.model.maps import load_model_input

    x, _ = load_model_input(sample, ["GMD", "GMV"])
    _, models = load_fold_models(default_bundle())  # the demo ensemble: trained, so its map has structure
    exact = occlusion_map(models[:1], x)
    fast = occlusion_map(models[:1], x, method="approximate")
    stats = fast.stats
    brain = exact.stats["computed_positions"]
    assert stats["coarse_positions"] + stats["refined_positions"] + stats["interpolated_positions"] == brain
    assert stats["computed_positions"] < 0.4 * brain
    assert fast.computed.sum() == stats["computed_positions"] and not fast.computed[~exact.computed].any()  # brain cubes only
    # the cubes it computes are exact; the others are estimates, and the map follows the exact one
    np.testing.assert_allclose(fast.drops[fast.computed], exact.drops[fast.computed], rtol=0, atol=1e-5)
    assert not np.allclose(fast.drops[~fast.computed], exact.drops[~fast.computed], atol=1e-5)
    inside = exact.importance != 0
    r = np.corrcoef(fast.importance[inside], exact.importance[inside])[0, 1]
    assert r > 0.9, r
    with pytest.raises(ValueError, match="whole lattice"):
        occlusion_map(models[:1], x, method="approximate", positions=cube_positions()[:5])


def test_map_averages_the_drops_of_covering_cubes() -> None:
    model = signal_preserving_init(build_network("ad_transfer", "tiny", 2), seed=6)
    x = np.random.default_rng(2).random((2, *grid.MODEL_SHAPE), dtype=np.float32)
    positions = np.array([[0, 0, 0], [6, 0, 0]])
    result = occlusion_map([model], x, positions=positions)
    assert result.importance[0, 0, 0] == pytest.approx(result.drops[0], abs=1e-6)
    assert result.importance[8, 0, 0] == pytest.approx(result.drops.mean(), abs=1e-6)  # covered by both
    assert result.importance[15, 0, 0] == pytest.approx(result.drops[1], abs=1e-6)
    assert result.importance[30, 30, 30] == 0


def test_progress_reaches_one_and_cancel_stops() -> None:
    models = [signal_preserving_init(build_network("ad_transfer", "tiny", 2), seed=s) for s in (7, 8)]
    x = np.random.default_rng(3).random((2, *grid.MODEL_SHAPE), dtype=np.float32)
    positions = spread(cube_positions(), 8)
    seen: list[float] = []
    occlusion_map(models, x, OcclusionSettings(batch_size=3), positions=positions, progress=lambda stage, f: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) == 6
    with pytest.raises(Cancelled):
        occlusion_map(models, x, positions=positions, should_cancel=lambda: True)


def test_region_summary_ranks_the_region_holding_the_importance() -> None:
    labels = grid.crop_to_model_grid(templates.aal_labels())
    importance = np.zeros(grid.MODEL_SHAPE, np.float32)
    importance[labels == 37] = 0.05  # Hippocampus_L
    importance[labels == 40] = 0.01  # ParaHippocampal_R
    summary = region_summary(importance, top=3)
    assert [r["name"] for r in summary["top_regions"][:2]] == ["Hippocampus_L", "ParaHippocampal_R"]
    hippocampal = {r["name"]: r for r in summary["hippocampal"]}
    assert hippocampal["Hippocampus_L"]["mean"] == pytest.approx(0.05) and hippocampal["Hippocampus_L"]["rank"] == 1
    assert set(hippocampal) == {"Hippocampus_L", "Hippocampus_R", "ParaHippocampal_L", "ParaHippocampal_R"}


def test_gradient_preview_is_named_as_such() -> None:
    model = signal_preserving_init(build_network("ad_transfer", "tiny", 2), seed=9)
    x = np.random.default_rng(4).random((2, *grid.MODEL_SHAPE), dtype=np.float32)
    result = occlusion_map([model], x, method="gradient")
    assert result.method == "gradient" and result.importance.shape == grid.MODEL_SHAPE
    assert np.abs(result.importance).max() > 0
    assert torch.is_grad_enabled()


def test_predict_writes_the_map_and_region_table(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    result = run_cli(
        "predict", "--gmd", sample["GMD"], "--gmv", sample["GMV"], "--model", tiny_bundle, "--out", tmp_path, "--occlusion", "gradient"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "result.json").read_text())["occlusion"]
    assert report["method"] == "gradient" and report["files"] == {"mni": "occlusion.nii.gz"}
    assert len(report["regions"]["hippocampal"]) == 4 and len(report["regions"]["top_regions"]) == 10
    image = nib.load(str(tmp_path / "occlusion.nii.gz"))
    assert image.shape == grid.MNI_SHAPE and np.allclose(image.affine, grid.MNI_AFFINE)


@pytest.mark.slow
def test_demo_model_occlusion_points_at_the_planted_hippocampal_atrophy(tmp_path: Path) -> None:
    from BrainImageNetADLib.core.resources import default_bundle
    from BrainImageNetTrainingLib.group_occlusion import group_occlusion
    from BrainImageNetTrainingLib.synth import write_cohort

    manifest = write_cohort(tmp_path / "cohort", 12, n_sites=2, n_datasets=1, seed=11)
    # cubes of the paper's size, not overlapping (a sixth of the paper's inputs): the region is found all the same
    settings = OcclusionSettings(cube=12, stride=12)
    summary = group_occlusion(default_bundle(), manifest, tmp_path / "occlusion", settings, fold=0, max_scans=6)
    assert summary["scans"]["AD"] >= 2
    regions = summary["regions"]["ad_probability_drop"]
    best = min(r["rank"] for r in regions["hippocampal"])
    assert best <= 10, [(r["name"], round(r["mean"], 4)) for r in regions["top_regions"]]
