"""Scoring a cohort with ``predict``: mixed inputs, a table, bad inputs reported, resume, shards."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainImageNetADLib.cohort import PREDICTION_COLUMNS, collect_cases
from BrainImageNetADLib.ensemble import Ensemble
from BrainImageNetADLib.maps import load_model_input
from conftest import COLIN27_T1, HANG_GUARD_S, assert_input_error


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "BrainImageNetADLib.cli", *map(str, args)], capture_output=True, text=True, timeout=HANG_GUARD_S
    )


def read_table(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows and list(rows[0]) == list(PREDICTION_COLUMNS)
    return {row["subject"]: row for row in rows}


@pytest.fixture()
def cohort(tmp_path: Path, sample: dict[str, Path]) -> list[Path]:
    """A list of map pairs (one broken), a folder of SPM wc1/mwc1 pairs, Colin27's T1 and a
    corrupt T1 file."""
    gmv = nib.load(sample["GMV"])
    nib.save(nib.Nifti1Image(np.asanyarray(gmv.dataobj) * 0.8, gmv.affine), tmp_path / "gmv_smaller.nii.gz")
    (tmp_path / "notes.nii.gz").write_text("not an image")
    (tmp_path / "maps.csv").write_text(
        f"subject,gmd,gmv\ns1,{sample['GMD']},{sample['GMV']}\ns2,{sample['GMD']},gmv_smaller.nii.gz\nbad,notes.nii.gz,{sample['GMV']}\n"
    )
    spm = tmp_path / "spm"
    spm.mkdir()
    shutil.copy(sample["GMD"], spm / "wc1ABC.nii.gz")
    shutil.copy(sample["GMV"], spm / "mwc1ABC.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    return [tmp_path / "maps.csv", spm, COLIN27_T1, broken]


def test_cases_are_collected_from_every_kind_of_input(cohort: list[Path]) -> None:
    cases = {c.subject: c for c in collect_cases(cohort)}
    assert sorted(cases) == ["ABC", "bad", "broken", "ch2", "s1", "s2"]
    assert cases["ABC"].gmd.name == "wc1ABC.nii.gz" and cases["ABC"].gmv.name == "mwc1ABC.nii.gz"
    assert cases["s2"].gmv == cohort[0].parent / "gmv_smaller.nii.gz"
    assert cases["ch2"].t1 == COLIN27_T1


def test_cohort_table_resume_and_shards(
    cohort: list[Path], tmp_path: Path, tiny_bundle: Path, colin: tuple[Path, dict], sample: dict[str, Path]
) -> None:
    out = tmp_path / "out"
    # Colin27's preprocessing is already there (shared with other tests): the run reads its report.
    shutil.copytree(colin[0], out / "ch2" / "preprocessing")
    result = run_cli("predict", *cohort, "--model", tiny_bundle, "--out", out, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "predictions.tsv")
    table = read_table(out / "predictions.tsv")
    assert {s: r["status"] for s, r in table.items()} == {
        "ABC": "done",
        "bad": "error",
        "broken": "error",
        "ch2": "done",
        "s1": "done",
        "s2": "done",
    }
    assert "notes.nii.gz" in table["bad"]["message"] and "broken.nii.gz" in table["broken"]["message"]
    assert len(result.stderr.strip().splitlines()) == 6  # one line per subject
    # The probabilities are the ensemble's on each subject's maps.
    ensemble = Ensemble.from_bundle(tiny_bundle)
    for subject, gmv in (("s1", sample["GMV"]), ("s2", cohort[0].parent / "gmv_smaller.nii.gz")):
        x, _ = load_model_input({"GMD": sample["GMD"], "GMV": gmv}, ["GMD", "GMV"])
        expected = ensemble.predict(x)
        assert float(table[subject]["probability"]) == pytest.approx(expected.probability, abs=1e-6)
        assert len(table[subject]["fold_probabilities"].split(",")) == 3
        assert table[subject]["label"] == expected.label and table[subject]["demo"] == "true"
    assert table["s1"]["probability"] == table["ABC"]["probability"] != table["s2"]["probability"]
    assert table["ch2"]["qc_verdict"] == colin[1]["verdict"]
    assert (out / "ch2" / "result.json").is_file() and not (out / "bad" / "result.json").exists()

    # Started again, finished subjects are kept (not recomputed); failed ones are tried again.
    stamp = (out / "s1" / "result.json").stat().st_mtime_ns
    again = run_cli("predict", *cohort, "--model", tiny_bundle, "--out", out)
    assert again.returncode == 0, again.stderr
    table = read_table(out / "predictions.tsv")
    assert [table[s]["status"] for s in ("ABC", "ch2", "s1", "s2")] == ["done before"] * 4
    assert table["bad"]["status"] == "error" and (out / "s1" / "result.json").stat().st_mtime_ns == stamp

    # Shards split the sorted subjects between the tasks of a job array.
    for i in range(2):
        assert run_cli("predict", *cohort[:2], "--model", tiny_bundle, "--out", tmp_path / f"shard{i}", "--shard", f"{i}/2").returncode == 0
    shards = [read_table(tmp_path / f"shard{i}" / "predictions.tsv") for i in range(2)]
    assert sorted(shards[0]) == ["ABC", "s1"] and sorted(shards[1]) == ["bad", "s2"]


def test_cohort_options_are_checked(cohort: list[Path], tmp_path: Path, tiny_bundle: Path) -> None:
    assert_input_error(
        run_cli("predict", *cohort[:2], "--model", tiny_bundle, "--out", tmp_path, "--occlusion", "incremental"), "one case at a time"
    )
    assert_input_error(run_cli("predict", *cohort[:2], "--model", tiny_bundle, "--out", tmp_path, "--shard", "2/2"), "--shard must be i/n")
