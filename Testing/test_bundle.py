"""Model bundles: round trip, checksums, pickle refusal, architecture checks, operating points,
and the shipped demonstration ensemble."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import BundleError
from BrainImageNetADLib.core.resources import default_bundle
from BrainImageNetADLib.model.bundle import load_fold_models, operating_point_at, read_card, save_bundle
from BrainImageNetADLib.model.networks import build_network
from conftest import edit_card, make_card


def test_round_trip_keeps_every_weight(tiny_bundle: Path) -> None:
    card, models = load_fold_models(tiny_bundle)
    assert card.preset == "tiny" and len(models) == 3
    x = torch.rand(1, 2, *grid.MODEL_SHAPE)
    with torch.inference_mode():
        outputs = [m(x).item() for m in models]
    assert len(set(outputs)) == 3  # the folds differ
    torch.manual_seed(100)
    again = build_network("ad_transfer", "tiny", 2)
    loaded = models[0].state_dict()
    assert torch.equal(loaded["stem.conv1.conv.weight"], again.state_dict()["stem.conv1.conv.weight"])
    assert not all(m.training for m in models)


def test_card_records_sha256_of_each_fold(tiny_bundle: Path) -> None:
    card = json.loads((tiny_bundle / "model_card.json").read_text())
    assert [f["file"] for f in card["folds"]] == [f"fold{i}.safetensors" for i in range(3)]
    assert all(len(f["sha256"]) == 64 for f in card["folds"])


def test_tampered_weights_are_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "fold1.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fold1.safetensors: sha256 .* does not match"):
        load_fold_models(bundle_copy)


def test_pickle_files_are_never_loaded(bundle_copy: Path) -> None:
    card = json.loads((bundle_copy / "model_card.json").read_text())
    torch.save({"x": torch.zeros(1)}, bundle_copy / "fold0.pt")
    card["folds"][0]["file"] = "fold0.pt"
    (bundle_copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="refusing to load a pickle"):
        load_fold_models(bundle_copy)


def test_weights_of_another_size_are_refused_with_shapes(bundle_copy: Path, tmp_path: Path) -> None:
    edit_card(bundle_copy, input={"channels": ["GMD"], "shape": list(grid.MODEL_SHAPE)})
    with pytest.raises(BundleError, match=r"stem.conv1.conv.weight has shape \(4, 2, 3, 3, 3\).*expects \(4, 1, 3, 3, 3\)"):
        load_fold_models(bundle_copy)
    edit_card(bundle_copy, input={"channels": ["GMD", "GMV"], "shape": list(grid.MODEL_SHAPE)}, architecture="sex")
    with pytest.raises(BundleError, match="do not belong to a tiny sex network"):
        load_fold_models(bundle_copy)


def test_foreign_file_with_safetensors_name_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "fold2.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    card = json.loads((bundle_copy / "model_card.json").read_text())
    import hashlib

    card["folds"][2]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle_copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load_fold_models(bundle_copy)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "has no model_card.json"), ("{broken", "not valid JSON"), ('{"name": "x"}', "missing fields")],
)
def test_broken_cards_are_explained(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "model_card.json").write_text(content)
    with pytest.raises(BundleError, match=message):
        read_card(tmp_path)


def test_operating_point_is_interpolated_from_the_card(tiny_bundle: Path) -> None:
    card = read_card(tiny_bundle)
    at_05 = operating_point_at(card, 0.5)
    assert (at_05.sensitivity, at_05.specificity) == pytest.approx((0.85, 0.90))
    between = operating_point_at(card, 0.35)
    assert between.sensitivity == pytest.approx(0.90) and between.specificity == pytest.approx(0.80)
    assert operating_point_at(card, 0.0).sensitivity == pytest.approx(0.95)
    assert operating_point_at(card, 1.0).specificity == pytest.approx(0.98)
    with pytest.raises(ValueError):
        operating_point_at(card, 1.5)


def test_save_bundle_checks_fold_count(tmp_path: Path) -> None:
    card = make_card()
    card["folds"] = [{}, {}]
    with pytest.raises(ValueError, match="2 folds for 1 models"):
        save_bundle(tmp_path, [build_network("ad_transfer", "tiny", 2)], card)


def test_shipped_demo_ensemble_says_what_it_is_and_meets_its_figures() -> None:
    bundle = default_bundle()
    card, models = load_fold_models(bundle)
    assert card.trained is True and card.demo is True and len(models) == 5
    assert card.intended_use.startswith("DEMONSTRATION MODEL trained on synthetic data")
    assert "Synthetic cohort" in card.data["training_data"] and "no patient data" in card.data["training_data"]
    training = card.data["training"]
    assert training["base_task"] == "sex" and training["config"]["split_key"] == "site"
    assert training["config"]["freeze_stem"] is True and training["config"]["folds"] == 5
    # Leave-sites-out figures measured when it was made, and its ROC for the threshold slider. Two
    # of the cohort's three planted subtypes are cortical, which the tiny network hardly sees
    # (docs/training.md): its leave-sites-out AUC is below its independent one.
    assert card.data["metrics"]["auc"] >= 0.85 and len(card.operating_points) > 10
    assert set(card.threshold_presets) == {"balanced", "screening"}
    assert sum(f.stat().st_size for f in bundle.iterdir()) < 5_000_000  # small enough for the repository


@pytest.mark.slow
def test_shipped_sample_is_reproduced_by_the_project_code(tmp_path: Path, sample: dict[str, Path], colin: tuple[Path, dict]) -> None:
    """The shipped sample maps are the preprocessing of the sample T1 (the session's Colin27 run),
    up to the last digits that another processor's floating-point kernels change (here up to 7e-4
    between an AMD EPYC and the machine that wrote them)."""
    import nibabel as nib

    from BrainImageNetTrainingLib.sample import make_colin27_sample

    rebuilt = make_colin27_sample(tmp_path, preprocessing_dir=colin[0])
    for kind in ("GMD", "GMV"):
        shipped, again = nib.load(str(sample[kind])), nib.load(str(rebuilt[kind]))
        rebuilt_map, shipped_map = np.asanyarray(again.dataobj), np.asanyarray(shipped.dataobj)
        np.testing.assert_allclose(rebuilt_map, shipped_map, rtol=0, atol=5e-3)
        assert np.corrcoef(rebuilt_map.ravel(), shipped_map.ravel())[0, 1] > 0.99999
        np.testing.assert_array_equal(again.affine, grid.MNI_AFFINE)
        assert shipped.shape == grid.MNI_SHAPE


def _mutations(card: dict) -> list[tuple[str, str]]:
    """(description, card text) pairs: every field the tool reads replaced by values of each wrong
    type, removed, or buried in deep nesting; a seeded shuffle of nested paths too."""
    import copy
    import random

    wrong = ["x", 7, -1.5, None, True, [], {}, ["GMD", 3], {"a": {"b": []}}, 1e309]
    paths: list[tuple] = [(k,) for k in card] + [("input", k) for k in card["input"]]
    paths += [("folds", 0, k) for k in card["folds"][0]] + [("operating_points", 0, k) for k in card["operating_points"][0]]
    paths += [("threshold_presets", "balanced"), ("folds", 0), ("operating_points", 0), ("input", "conventions")]
    cases = []
    rng = random.Random(7)
    for path in paths:
        for value in [*rng.sample(wrong, 4), "<deleted>"]:
            mutated = copy.deepcopy(card)
            parent = mutated
            for key in path[:-1]:
                parent = parent[key]
            if value == "<deleted>":
                if isinstance(parent, dict):
                    parent.pop(path[-1], None)
                else:
                    del parent[path[-1]]
            else:
                parent[path[-1]] = value
            cases.append((f"{'.'.join(map(str, path))} = {value!r}", json.dumps(mutated)))
    cases.append(("nested 100000 deep", "[" * 100_000 + "]" * 100_000))
    cases.append(("a list", "[1, 2, 3]"))
    return cases


def test_every_malformed_card_is_refused_with_one_line(bundle_copy: Path, sample: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A fuzz over the model card: the command exits 0 (the card still holds) or 2 with one
    ``error:`` line, never a traceback."""
    from BrainImageNetADLib.cli import main

    card_path = bundle_copy / "model_card.json"
    card = json.loads(card_path.read_text())
    cases = _mutations(card)
    refused = 0
    for description, text in cases:
        card_path.write_text(text)
        out = tmp_path / "out"
        code = main(
            [
                "predict",
                "--gmd",
                str(sample["GMD"]),
                "--gmv",
                str(sample["GMV"]),
                "--model",
                str(bundle_copy),
                "--out",
                str(out),
                "--occlusion",
                "none",
            ]
        )
        lines = capsys.readouterr().err.strip().splitlines()
        assert code in (0, 2), description
        if code == 2:
            refused += 1
            assert len(lines) == 1 and lines[0].startswith("error: "), (description, lines)
    assert refused > 0.6 * len(cases), f"only {refused} of {len(cases)} mutations refused"
