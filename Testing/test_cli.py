"""The ``brainimagenet-ad predict`` command, run as a user runs it (a real process)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetADLib.model.maps import load_model_input
from conftest import COLIN27_T1, HANG_GUARD_S, assert_input_error


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "BrainImageNetADLib.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)


def test_predict_sample_writes_result_json(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    result = run_cli(
        "predict",
        "--gmd",
        sample["GMD"],
        "--gmv",
        sample["GMV"],
        "--model",
        tiny_bundle,
        "--threshold",
        "0.2",
        "--out",
        tmp_path,
        "--occlusion",
        "none",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "result.json").read_text())
    x, _ = load_model_input(sample, ["GMD", "GMV"])
    expected = Ensemble.from_bundle(tiny_bundle).predict(x, 0.2)
    assert out["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert out["fold_probabilities"] == pytest.approx(expected.fold_probabilities, abs=1e-6)
    assert out["label"] == expected.label and out["threshold"] == 0.2
    assert (out["sensitivity"], out["specificity"]) == pytest.approx((0.95, 0.70))
    assert out["model_name"] == "test bundle" and out["demo"] is True
    assert out["input_checks"]["GMD"]["source_shape"] == [121, 145, 121]
    assert out["regions_mni"] == "regions_mni.nii.gz"  # the hippocampal regions, on the maps' MNI grid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regions_mni.nii.gz", "result.json"]  # no temporary files left


@pytest.mark.slow
def test_predict_sample_t1_end_to_end_with_the_shipped_bundle(tmp_path: Path) -> None:
    result = run_cli("predict", "--sample", "--progress", "--occlusion-fold", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    stages = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert stages[:7] == ["read", "affine", "n4", "segment", "normalise", "write", "ensemble"] and set(stages[7:]) == {"occlusion"}
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["trained"] is True and out["demo"] is True and "DEMONSTRATION MODEL" in out["intended_use"]
    assert out["sensitivity"] is not None and 0.0 < out["probability"] < 1.0
    assert out["qc"]["verdict"] in ("pass", "warn") and out["qc"]["volumes_ml"]["GM_ml"] > 0
    assert out["input_checks"]["GMD"]["file"] == "gmd.nii.gz"
    assert (tmp_path / "preprocessing" / "qc_gmd.png").stat().st_size > 1000
    # The heat map on the patient's own T1 grid, beside the one on the MNI grid.
    occlusion = out["occlusion"]
    assert occlusion["method"] == "incremental" and occlusion["fold"] == 0
    assert occlusion["files"] == {"mni": "occlusion.nii.gz", "native": "occlusion_native.nii.gz"}
    t1, native = nib.load(str(COLIN27_T1)), nib.load(str(tmp_path / "occlusion_native.nii.gz"))
    assert native.shape == t1.shape
    np.testing.assert_allclose(native.affine, t1.affine, atol=1e-3)
    regions = nib.load(str(tmp_path / out["regions_native"]))
    assert regions.shape == t1.shape and set(np.unique(np.asanyarray(regions.dataobj))) == {0, 37, 38, 39, 40}
    mni = np.asanyarray(nib.load(str(tmp_path / "occlusion.nii.gz")).dataobj)
    assert np.abs(mni).max() > 0 and np.abs(np.asanyarray(native.dataobj)).max() > 0


def _write(path: Path, data: np.ndarray, affine: np.ndarray = grid.MNI_AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def _t1_on_mni_grid() -> np.ndarray:
    image = nib.load(str(COLIN27_T1))
    return grid.resample_to_mni_grid(np.asanyarray(image.dataobj, dtype=np.float32), image.affine)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "file not found"),
        ("not_an_image", "cannot read"),
        ("truncated", "cannot read"),
        ("4d", "is 4D with 3 volumes"),
        ("2d", "expected a 3D map"),
        ("nan", "NaN or infinite"),
        ("zeros", "the map is empty"),
        ("t1", "is this a T1 image?"),
        ("native_t1", "not on the model grid"),
        ("negative", "negative values"),
    ],
)
def test_bad_gmd_gets_exit_2_and_one_line(tmp_path: Path, sample: dict[str, Path], case: str, message: str) -> None:
    good = np.asanyarray(nib.load(str(sample["GMD"])).dataobj, dtype=np.float32)
    path = tmp_path / "gmd.nii.gz"
    if case == "missing":
        path = tmp_path / "nothing.nii.gz"
    elif case == "not_an_image":
        path.write_text("subject,age\n1,70\n")
    elif case == "truncated":
        path.write_bytes(gzip.compress(sample["GMD"].read_bytes())[:5000])
    elif case == "4d":
        _write(path, np.stack([good] * 3, axis=-1))
    elif case == "2d":
        _write(path, good[:, :, 60])
    elif case == "nan":
        bad = good.copy()
        bad[60, 70, 60] = np.nan
        _write(path, bad)
    elif case == "zeros":
        _write(path, np.zeros_like(good))
    elif case == "t1":
        _write(path, _t1_on_mni_grid())
    elif case == "native_t1":
        path = COLIN27_T1
    elif case == "negative":
        _write(path, good - 0.5)
    assert_input_error(run_cli("predict", "--gmd", path, "--gmv", sample["GMV"], "--out", tmp_path / "out"), message)
    assert not (tmp_path / "out" / "result.json").exists()


def test_bad_options_get_exit_2_and_one_line(tmp_path: Path, sample: dict[str, Path]) -> None:
    assert_input_error(run_cli("predict", "--sample", "--threshold", "1.5", "--out", tmp_path), "threshold must lie in [0, 1]")
    assert_input_error(run_cli("predict", "--sample", "--model", tmp_path, "--out", tmp_path), "is not a model bundle")
    assert_input_error(run_cli("predict", "--gmd", sample["GMD"], "--out", tmp_path), "needs a GMV map")
    assert_input_error(run_cli("predict", "--out", tmp_path), "give one kind of input")
    assert_input_error(run_cli("predict", "--sample", "--device", "gpu7", "--out", tmp_path), "unknown device 'gpu7'")
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    assert_input_error(run_cli("predict", "--gmd", sample["GMD"], "--gmv", sample["GMV"], "--out", taken), "is a file; give a folder")


def test_terminal_shows_progress_bars_and_a_pipe_gets_none(tiny_bundle: Path, sample: dict[str, Path], tmp_path: Path) -> None:
    """At a terminal (a pseudo-terminal made by util-linux's ``script``), long work shows one bar
    per stage group with the time left; with the output in a pipe, nothing but the result path."""
    command = [sys.executable, "-m", "BrainImageNetADLib.cli", "predict", "--gmd", str(sample["GMD"]), "--gmv", str(sample["GMV"])]
    command += ["--model", str(tiny_bundle), "--occlusion-fold", "0"]
    shell = " ".join(command + ["--out", str(tmp_path / "tty")])
    log = tmp_path / "terminal.log"
    subprocess.run(["script", "-qec", shell, str(log)], capture_output=True, text=True, timeout=HANG_GUARD_S, check=True)
    screen = log.read_text(errors="replace").replace("\r", "\n")
    assert "Ensemble: 100%" in screen
    occlusion = [line for line in screen.splitlines() if line.startswith("Heat map (occlusion model 1/1):")]
    assert occlusion and "%|" in occlusion[-1] and "<" in occlusion[-1]  # fraction, bar, elapsed<left
    piped = subprocess.run(command + ["--out", str(tmp_path / "pipe")], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout.strip().endswith("result.json")


def test_terminal_progress_travels_to_a_child_process() -> None:
    import pickle

    from BrainImageNetADLib.core.progress import TerminalProgress, stage_group

    progress = TerminalProgress()
    progress("read", 0.1)  # a bar is open here
    copy = pickle.loads(pickle.dumps(progress))
    assert copy._bar is None  # the child starts its own bars
    progress.close()
    assert [stage_group(s) for s in ("n4", "ensemble", "occlusion model 2/5", "fold 1 epoch 2")] == [
        "Preprocessing",
        "Ensemble",
        "Heat map",
        None,
    ]


def test_a_rerun_into_a_used_folder_leaves_only_what_its_result_lists(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    maps = ["--gmd", sample["GMD"], "--gmv", sample["GMV"], "--model", tiny_bundle, "--out", tmp_path]
    assert run_cli("predict", *maps, "--occlusion", "gradient").returncode == 0
    assert (tmp_path / "occlusion.nii.gz").is_file()
    (tmp_path / ".result.json.killed.tmp").write_text('{"probab')  # left by a run that was killed
    again = run_cli("predict", *maps, "--occlusion", "none")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regions_mni.nii.gz", "result.json"]
