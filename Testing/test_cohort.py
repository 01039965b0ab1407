"""Scoring a cohort with ``predict``: mixed inputs, a table, bad inputs reported, resume, shards."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainImageNetADLib.cohort.scoring import PREDICTION_COLUMNS, collect_cases
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetADLib.model.maps import load_model_input
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
    assert sorted(cases) == ["ABC", "bad", "broken", "colin27_t1", "s1", "s2"]
    assert cases["ABC"].gmd.name == "wc1ABC.nii.gz" and cases["ABC"].gmv.name == "mwc1ABC.nii.gz"
    assert cases["s2"].gmv == cohort[0].parent / "gmv_smaller.nii.gz"
    assert cases["colin27_t1"].t1 == COLIN27_T1


def test_cohort_table_resume_and_shards(
    cohort: list[Path], tmp_path: Path, tiny_bundle: Path, colin: tuple[Path, dict], sample: dict[str, Path]
) -> None:
    out = tmp_path / "out"
    # Colin27's preprocessing is already there (shared with other tests): the run reads its report.
    shutil.copytree(colin[0], out / "colin27_t1" / "preprocessing")
    result = run_cli("predict", *cohort, "--model", tiny_bundle, "--out", out, "--jobs", "2")
    assert result.returncode == 3, result.stderr  # two subjects failed: the run says so
    assert result.stderr.strip().splitlines()[-1] == f"error: 2 of 6 subjects failed (bad, broken); see {out / 'predictions.tsv'}"
    table = read_table(out / "predictions.tsv")
    assert {s: r["status"] for s, r in table.items()} == {
        "ABC": "done",
        "bad": "error",
        "broken": "error",
        "colin27_t1": "done",
        "s1": "done",
        "s2": "done",
    }
    assert "notes.nii.gz" in table["bad"]["message"] and "broken.nii.gz" in table["broken"]["message"]
    assert len(result.stderr.strip().splitlines()) == 7  # one line per subject, and the summary
    # The probabilities are the ensemble's on each subject's maps.
    ensemble = Ensemble.from_bundle(tiny_bundle)
    for subject, gmv in (("s1", sample["GMV"]), ("s2", cohort[0].parent / "gmv_smaller.nii.gz")):
        x, _ = load_model_input({"GMD": sample["GMD"], "GMV": gmv}, ["GMD", "GMV"])
        expected = ensemble.predict(x)
        assert float(table[subject]["probability"]) == pytest.approx(expected.probability, abs=1e-6)
        assert len(table[subject]["fold_probabilities"].split(",")) == 3
        assert table[subject]["label"] == expected.label and table[subject]["demo"] == "true"
    assert table["s1"]["probability"] == table["ABC"]["probability"] != table["s2"]["probability"]
    assert table["colin27_t1"]["qc_verdict"] == colin[1]["verdict"]
    assert (out / "colin27_t1" / "result.json").is_file() and not (out / "bad" / "result.json").exists()

    # Started again, finished subjects are kept (not recomputed); failed ones are tried again.
    stamp = (out / "s1" / "result.json").stat().st_mtime_ns
    again = run_cli("predict", *cohort, "--model", tiny_bundle, "--out", out)
    assert again.returncode == 3, again.stderr
    table = read_table(out / "predictions.tsv")
    assert [table[s]["status"] for s in ("ABC", "colin27_t1", "s1", "s2")] == ["done before"] * 4
    assert table["bad"]["status"] == "error" and (out / "s1" / "result.json").stat().st_mtime_ns == stamp

    # Shards split the sorted subjects between the tasks of a job array.
    for i in range(2):
        code = run_cli("predict", *cohort[:2], "--model", tiny_bundle, "--out", tmp_path / f"shard{i}", "--shard", f"{i}/2").returncode
        assert code == (3 if i == 1 else 0)  # shard 1 holds the broken subject
    shards = [read_table(tmp_path / f"shard{i}" / "predictions.tsv") for i in range(2)]
    assert sorted(shards[0]) == ["ABC", "s1"] and sorted(shards[1]) == ["bad", "s2"]


def test_cohort_options_are_checked(cohort: list[Path], tmp_path: Path, tiny_bundle: Path) -> None:
    assert_input_error(
        run_cli("predict", *cohort[:2], "--model", tiny_bundle, "--out", tmp_path, "--occlusion", "incremental"), "one case at a time"
    )
    assert_input_error(run_cli("predict", *cohort[:2], "--model", tiny_bundle, "--out", tmp_path, "--shard", "2/2"), "--shard must be i/n")


@pytest.mark.parametrize("subject", ["../../escaped", "/tmp/escaped", "a\tb", ".", "..", "two words"])
def test_subjects_are_names_not_paths(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path, subject: str) -> None:
    listed = tmp_path / "list.tsv"
    listed.write_text(f"subject\tgmd\tgmv\ns1\t{sample['GMD']}\t{sample['GMV']}\n{subject}\t{sample['GMD']}\t{sample['GMV']}\n")
    if "\t" in subject:  # a tab splits the row: a field too many
        assert_input_error(
            run_cli("predict", listed, "--model", tiny_bundle, "--out", tmp_path / "out"), "line 3 has 4 fields, the header 3"
        )
    else:
        assert_input_error(
            run_cli("predict", listed, "--model", tiny_bundle, "--out", tmp_path / "out"),
            f"list.tsv: row 2: identifier {subject!r} is not a plain name",
        )
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()
    assert not (tmp_path / "out" / "result.json").exists()


def test_lists_with_a_byte_order_mark_and_short_rows(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    listed = tmp_path / "list.csv"
    listed.write_text(f"\ufeffsubject,gmd,gmv\ns1,{sample['GMD']},{sample['GMV']}\n", encoding="utf-8")
    assert run_cli("predict", listed, "--model", tiny_bundle, "--out", tmp_path / "out").returncode == 0
    assert set(read_table(tmp_path / "out" / "predictions.tsv")) == {"s1"}
    listed.write_text(f"subject,gmd,gmv\ns1,{sample['GMD']},{sample['GMV']}\ns2,{sample['GMD']}\n")
    assert_input_error(
        run_cli("predict", listed, "--model", tiny_bundle, "--out", tmp_path / "out2"), "list.csv: line 3 has 2 fields, the header 3"
    )


def test_one_folder_one_truth(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    """Shards writing into one folder at once keep every row; a resumed run with another
    threshold is refused; a corrupt result is redone; a run where every subject fails exits 3."""
    listed = tmp_path / "list.csv"
    listed.write_text("subject,gmd,gmv\n" + "".join(f"s{i:02d},{sample['GMD']},{sample['GMV']}\n" for i in range(12)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "BrainImageNetADLib.cli", "predict", str(listed), "--model", str(tiny_bundle), "--out", str(out)]
    shards = [subprocess.Popen([*command, "--shard", f"{i}/3"], stderr=subprocess.PIPE, text=True) for i in range(3)]
    assert all(p.wait(timeout=HANG_GUARD_S) == 0 for p in shards), [p.stderr.read() for p in shards]
    table = read_table(out / "predictions.tsv")
    assert sorted(table) == [f"s{i:02d}" for i in range(12)] and {r["status"] for r in table.values()} == {"done"}
    assert_input_error(run_cli("predict", listed, "--model", tiny_bundle, "--out", out, "--threshold", "0.3"), "threshold 0.5 -> 0.3")
    (out / "s03" / "result.json").write_text('{"probability": 0.')
    again = run_cli("predict", listed, "--model", tiny_bundle, "--out", out)
    assert again.returncode == 0 and "s03/result.json: incomplete or corrupt; the subject is done again" in again.stderr
    assert read_table(out / "predictions.tsv")["s03"]["status"] == "done" and json.loads((out / "s03" / "result.json").read_text())
    redone = run_cli("predict", listed, "--model", tiny_bundle, "--out", out, "--threshold", "0.3", "--overwrite")
    assert redone.returncode == 0 and {r["threshold"] for r in read_table(out / "predictions.tsv").values()} == {"0.3"}
    broken = tmp_path / "broken.csv"
    broken.write_text(f"subject,gmd,gmv\nx1,{listed},{listed}\n")
    failed = run_cli("predict", broken, "--model", tiny_bundle, "--out", tmp_path / "failed")
    assert failed.returncode == 3 and failed.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 subjects failed (x1)")


def test_a_cohort_killed_with_sigkill_resumes_to_one_whole_table(tmp_path: Path, sample: dict[str, Path], tiny_bundle: Path) -> None:
    import signal

    listed = tmp_path / "list.csv"
    listed.write_text("subject,gmd,gmv\n" + "".join(f"s{i:02d},{sample['GMD']},{sample['GMV']}\n" for i in range(20)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "BrainImageNetADLib.cli", "predict", str(listed), "--model", str(tiny_bundle), "--out", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    end = time.monotonic() + HANG_GUARD_S
    while not (out / "predictions.tsv").is_file() or len(read_list_rows(out / "predictions.tsv")) < 3:
        assert process.poll() is None and time.monotonic() < end, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=HANG_GUARD_S)
    done_before = len(read_list_rows(out / "predictions.tsv"))
    assert 3 <= done_before < 20
    again = run_cli("predict", listed, "--model", tiny_bundle, "--out", out)
    assert again.returncode == 0, again.stderr
    table = read_table(out / "predictions.tsv")
    assert sorted(table) == [f"s{i:02d}" for i in range(20)] and all(r["status"] in ("done", "done before") for r in table.values())
    assert not list(out.rglob("*.tmp")), "temporary files of the killed run remain"


def read_list_rows(path: Path) -> list[str]:
    """The data lines of a table being rewritten by another process (atomically: never torn)."""
    return path.read_text().splitlines()[1:]
