"""Training: real tiny networks trained on a real (small) synthetic cohort, run folders, resume,
transfer, export, evaluation and the leakage guard."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from BrainImageNetADLib.core.errors import BundleError, Cancelled, InputError
from BrainImageNetADLib.model.bundle import load_fold_models
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetTrainingLib import metrics
from BrainImageNetTrainingLib.cards import subject_digest
from BrainImageNetTrainingLib.data import MapStore
from BrainImageNetTrainingLib.evaluation import evaluate
from BrainImageNetTrainingLib.manifest import read_manifest
from BrainImageNetTrainingLib.splits import LeakageError
from BrainImageNetTrainingLib.synth import write_cohort
from BrainImageNetTrainingLib.training import TrainConfig, train
from conftest import HANG_GUARD_S, assert_input_error

QUICK = {"preset": "tiny", "batch_size": 4, "validation": 2}


def run_train_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "BrainImageNetTrainingLib.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shares = {"AD": 0.35, "NC": 0.45, "sMCI": 0.1, "pMCI": 0.1}  # both classes in every AD fold's training sites
    return write_cohort(tmp_path_factory.mktemp("cohort"), 16, n_sites=4, n_datasets=2, seed=21, diagnoses=shares)


@pytest.fixture(scope="module")
def base_run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "base"
    train(TrainConfig(task="sex", folds=0, epochs=1, **QUICK), cohort, out, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def ad_run(cohort: Path, base_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ad"
    config = TrainConfig(task="ad", folds=2, epochs=2, base=str(base_run), freeze_stem=True, lr=0.01, **QUICK)
    train(config, cohort, out, log=lambda m: None)
    return out


def test_base_run_exports_a_sex_bundle(base_run: Path) -> None:
    for name in ("config.json", "environment.json", "splits.json", "metrics.json", "predictions.tsv", "roc.png"):
        assert (base_run / name).is_file(), name
    card, models = load_fold_models(base_run / "bundle")
    assert card.architecture == "sex" and card.trained and len(models) == 1
    assert json.loads((base_run / "metrics.json").read_text())["scored_on"] == "validation"
    assert list((base_run / "tensorboard" / "fold0").glob("events.out.tfevents.*"))


def test_transfer_keeps_the_pretrained_stem_and_scores_every_scan_once(ad_run: Path, base_run: Path, cohort: Path) -> None:
    base_card, (base,) = load_fold_models(base_run / "bundle")
    card, folds = load_fold_models(ad_run / "bundle")
    assert card.architecture == "ad_transfer" and len(folds) == 2
    assert card.data["training"]["base_task"] == "sex"
    for model in folds:  # frozen stem: exactly the base network's weights
        for key, value in base.stem.state_dict().items():
            assert torch.equal(model.stem.state_dict()[key], value), key
    rows = list(csv.DictReader((ad_run / "predictions.tsv").open(), delimiter="\t"))
    scans = read_manifest(cohort)
    assert sorted(r["subject"] for r in rows) == sorted(s.subject for s in scans)  # MCI scans too
    # The exported ensemble reproduces the run's test predictions with each fold's own model.
    ensemble = Ensemble.from_bundle(ad_run / "bundle")
    store = MapStore(scans, ["GMD", "GMV"])
    index = {s.subject: i for i, s in enumerate(scans)}
    for row in rows[:4]:
        _, per_fold = ensemble.predict_proba(store.get([index[row["subject"]]]).numpy())
        assert per_fold[0, int(row["fold"])] == pytest.approx(float(row["output"]), abs=1e-5)


def test_card_records_metrics_operating_points_and_training_subjects(ad_run: Path, cohort: Path) -> None:
    card = json.loads((ad_run / "bundle" / "model_card.json").read_text())
    summary = json.loads((ad_run / "metrics.json").read_text())
    assert card["metrics"] == summary["pooled"] and summary["pooled"]["n"] > 0
    thresholds = [p["threshold"] for p in card["operating_points"]]
    assert thresholds == sorted(thresholds) and len(thresholds) == len(metrics.OPERATING_THRESHOLDS)
    assert card["operating_points"][0]["sensitivity"] == 1.0  # threshold 0: everything is AD
    trained = {s.subject for s in read_manifest(cohort) if s.diagnosis in ("AD", "NC")}
    assert set(card["training_subjects_sha256"]) == {subject_digest(s) for s in trained}
    assert set(summary["analysis"]) >= {"ad_vs_nc", "mci", "mmse", "field_strength"}
    assert not card["demo"] and "DEMONSTRATION" not in card["intended_use"]


def test_interrupted_run_resumes_to_the_same_weights(cohort: Path, tmp_path: Path) -> None:
    config = TrainConfig(task="ad", folds=2, epochs=2, freeze_stem=True, lr=0.01, **QUICK)
    train(config, cohort, tmp_path / "straight", log=lambda m: None)
    checkpoint = tmp_path / "resumed" / "fold0" / "checkpoint.safetensors"

    def cancel_in_second_epoch() -> bool:
        return checkpoint.is_file()  # written at the end of the first epoch

    with pytest.raises(Cancelled):
        train(config, cohort, tmp_path / "resumed", should_cancel=cancel_in_second_epoch, log=lambda m: None)
    assert checkpoint.is_file() and not (tmp_path / "resumed" / "fold0" / "result.json").exists()
    messages: list[str] = []
    train(config, cohort, tmp_path / "resumed", log=messages.append)
    assert any("resuming after epoch 1" in m for m in messages)
    for fold in ("fold0", "fold1"):
        a = load_file(str(tmp_path / "straight" / fold / "best.safetensors"))
        b = load_file(str(tmp_path / "resumed" / fold / "best.safetensors"))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_run_folder_refuses_other_settings(cohort: Path, tmp_path: Path) -> None:
    config = TrainConfig(task="sex", folds=0, epochs=1, **QUICK)
    train(config, cohort, tmp_path / "run", log=lambda m: None)
    with pytest.raises(InputError, match=r"other settings \(epochs\)"):
        train(TrainConfig(task="sex", folds=0, epochs=2, **QUICK), cohort, tmp_path / "run", log=lambda m: None)


def test_base_must_match_preset_and_task(ad_run: Path, base_run: Path, cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="must be a sex or age network"):
        train(TrainConfig(task="ad", folds=2, epochs=1, base=str(ad_run), **QUICK), cohort, tmp_path / "a", log=lambda m: None)
    small = {**QUICK, "preset": "small"}
    with pytest.raises(BundleError, match="base model is tiny"):
        train(TrainConfig(task="ad", folds=2, epochs=1, base=str(base_run), **small), cohort, tmp_path / "b", log=lambda m: None)


def test_evaluate_refuses_training_subjects_and_scores_independent_ones(ad_run: Path, cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(LeakageError, match="were used to train"):
        evaluate([ad_run / "bundle"], cohort, tmp_path / "leak")
    assert not (tmp_path / "leak" / "evaluation.json").exists()
    independent = write_cohort(tmp_path / "independent", 6, n_sites=2, n_datasets=2, seed=22, diagnoses={"AD": 0.5, "NC": 0.5})
    result = evaluate([ad_run / "bundle", ad_run / "bundle"], independent, tmp_path / "eval", permutations=200)
    assert [r["dataset"] for r in result["table"]] == ["DS1", "DS2", "all"] * 2
    assert result["table"][-1]["samples"] == sum(s.diagnosis in ("AD", "NC") for s in read_manifest(independent))
    table = (tmp_path / "eval" / "table.md").read_text()
    assert table.startswith("| model | input | base |") and "| GMD+GMV | sex | all |" in table
    rows = list(csv.DictReader((tmp_path / "eval" / "predictions_0.tsv").open(), delimiter="\t"))
    assert len(rows) == 6 and all(0.0 <= float(r["output"]) <= 1.0 for r in rows)


def test_training_cli_errors_are_one_line(cohort: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,site\nA,s1\n")
    assert_input_error(run_train_cli("pretrain", "--manifest", bad, "--out", tmp_path / "r"), "missing columns ['dataset', 'diagnosis']")
    assert_input_error(
        run_train_cli("transfer", "--manifest", cohort, "--out", tmp_path / "r", "--preset", "tiny", "--folds", "9"),
        "4 sites left to test",
    )
    assert_input_error(
        run_train_cli("pretrain", "--manifest", cohort, "--out", tmp_path / "r", "--channels", "T1"), "unknown input channel 'T1'"
    )


def test_binary_metrics_and_tests_on_known_values() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1, 0.05])
    m = metrics.binary_metrics(labels, scores)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(6 / 8) and m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["auc"] == pytest.approx(13 / 15)  # 13 of the 15 AD/NC pairs are ordered correctly
    points = metrics.operating_points(labels, scores)
    assert metrics.screening_threshold(points, 1.0) == pytest.approx(0.4)
    groups = np.array(["1.5"] * 40 + ["3.0"] * 40)
    assert metrics.permutation_test(np.r_[np.ones(40), np.zeros(40)], groups, 500)["p"] < 0.01
    assert metrics.permutation_test(np.tile([1, 0], 40), groups, 500)["p"] > 0.5
    assert metrics.spearman(np.arange(10), -np.arange(10))["rho"] == pytest.approx(-1.0)


@pytest.mark.slow
def test_torchrun_two_processes_train_the_same_procedure(cohort: Path, base_run: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "BrainImageNetTrainingLib.cli"]
    command += ["transfer", "--manifest", str(cohort), "--out", str(tmp_path / "ddp"), "--base", str(base_run), "--freeze-stem"]
    command += ["--preset", "tiny", "--folds", "2", "--epochs", "1", "--batch-size", "4", "--validation", "2", "--threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-3000:]
    card, models = load_fold_models(tmp_path / "ddp" / "bundle")
    assert len(models) == 2 and card.trained


def test_group_occlusion_averages_per_scan_drops_and_guards_leakage(ad_run: Path, cohort: Path, tmp_path: Path) -> None:
    from BrainImageNetADLib.explain.occlusion import OcclusionSettings, cube_positions, occlusion_map

    independent = write_cohort(tmp_path / "independent", 6, n_sites=2, n_datasets=1, seed=22)
    out = tmp_path / "occlusion"
    result = run_train_cli("occlusion", "--model", ad_run / "bundle", "--manifest", independent, "--out", out, "--stride", "30")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "group_occlusion.json").read_text())
    scans = read_manifest(independent)
    ad = [i for i, s in enumerate(scans) if s.diagnosis == "AD"]
    assert summary["scans"] == {"AD": len(ad), "NC": sum(s.diagnosis == "NC" for s in scans)} and ad
    assert summary["settings"]["stride_mm"] == 45.0
    rows = list(csv.DictReader((out / "cubes.tsv").open(), delimiter="\t"))
    positions = cube_positions(12, 30)
    assert len(rows) == len(positions)
    # The AD map is the mean over AD scans of each scan's exact per-cube probability drop.
    _, models = load_fold_models(ad_run / "bundle")
    store = MapStore(scans, ["GMD", "GMV"])
    drops = np.mean([occlusion_map(models, store.one(i), OcclusionSettings(stride=30), positions=positions).drops for i in ad], axis=0)
    np.testing.assert_allclose([float(r["ad_probability_drop"]) for r in rows], drops, atol=1e-5)
    accuracy = np.array([float(r["accuracy_drop"]) for r in rows])
    assert (np.abs(accuracy) <= 1).all()
    assert {"accuracy_drop", "ad_probability_drop"} == set(summary["regions"])
    assert_input_error(
        run_train_cli("occlusion", "--model", ad_run / "bundle", "--manifest", cohort, "--out", out, "--stride", "30"),
        "were used to train",
    )


def test_demo_makes_a_demonstration_bundle_and_resumes(tmp_path: Path) -> None:
    from BrainImageNetADLib.model.bundle import read_card
    from BrainImageNetTrainingLib.demo import DemoSettings, export_bundle, run_demo

    settings = DemoSettings(
        subjects=24,
        sites=5,
        independent_subjects=8,
        independent_sites=2,
        pretrain_epochs=1,
        pretrain_validation=4,
        transfer_epochs=2,
        transfer_validation=4,
    )
    summary = run_demo(tmp_path / "demo", settings, log=lambda m: None)
    assert len(summary["seconds"]) == 7 and summary["seconds"]["total"] > 0
    assert summary["independent"]["table"][0]["samples"] > 0
    card = read_card(export_bundle(tmp_path / "demo", tmp_path / "Models" / "demo-tiny"))
    assert card.demo and card.trained and card.intended_use.startswith("DEMONSTRATION MODEL")
    assert card.data["training"]["base_task"] == "sex" and len(card.data["folds"]) == 5
    # two epochs on 24 subjects: the ensemble scores the mean AD and NC maps alike, so no blend reaches 0.5
    assert card.risk_template is None and "no blend" in json.loads((tmp_path / "demo" / "risk_template.json").read_text())["error"]
    messages: list[str] = []
    run_demo(tmp_path / "demo", settings, log=messages.append)
    assert len(messages) == 6 and all(m.endswith("already done") for m in messages)


def test_precise_batch_norm_gives_evaluation_the_statistics_training_used(cohort: Path, tmp_path: Path) -> None:
    """Without precise batch norm, a short training leaves the running statistics far from the
    ones the network was trained with, and evaluation-mode outputs drift from the outputs under
    the batch's own statistics; with it they agree (to the two validation scans in the batch)."""
    store = MapStore(read_manifest(cohort), ["GMD", "GMV"])
    x = store.get(list(range(len(store.scans))))

    def drift(precise_bn: int) -> float:
        out = tmp_path / f"precise{precise_bn}"
        # the training scans in one batch: the precise statistics are then that batch's own
        config = TrainConfig(task="sex", folds=0, epochs=2, precise_bn=precise_bn, seed=3, **{**QUICK, "batch_size": 16})
        train(config, cohort, out, log=lambda m: None)
        _, (model,) = load_fold_models(out / "bundle")
        with torch.no_grad():
            evaluation = torch.sigmoid(model.eval()(x)).flatten()
            for layer in model.modules():  # batch statistics of every scan in one batch; dropout stays off
                if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    layer.train()
            batch_statistics = torch.sigmoid(model(x)).flatten()
        return float((evaluation - batch_statistics).abs().mean())

    with_precise, without = drift(1000), drift(0)
    assert with_precise < 0.5 * without, (with_precise, without)
