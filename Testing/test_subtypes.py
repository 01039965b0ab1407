"""AD subtypes from risk maps: elbow, correlations, the outputs of a run on a synthetic cohort with
planted subtypes, resuming, and refused requests."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_training import run_train_cli

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import Cancelled
from BrainImageNetADLib.core.resources import default_bundle
from BrainImageNetTrainingLib.subtypes import SubtypeSettings, correlations, elbow, run_subtypes
from BrainImageNetTrainingLib.synth import write_cohort
from conftest import assert_input_error

#: Risk-map geometry of these tests: one fold network, and larger cubes side by side instead of
#: the authors' overlapping ones (a ninth of their inputs; the clustering and assignment are what
#: is tested, and the geometry is the same code at any size).
FAST = ("--fold", "0", "--cube", "16", "--step", "16")


def test_elbow_is_where_the_sum_of_squares_stops_falling_fast() -> None:
    assert elbow([100.0, 40.0, 10.0, 9.0, 8.5, 8.0, 7.6, 7.3, 7.0, 6.8]) == 3
    assert elbow([100.0, 20.0, 18.0, 16.0, 14.0]) == 2
    assert elbow([10.0, 8.0, 6.0, 4.0, 2.0]) == 1  # a straight line has no elbow
    assert elbow([5.0, 4.0]) == 1


def test_correlations_are_pearson() -> None:
    rng = np.random.default_rng(0)
    maps, centres = rng.random((4, 50)), rng.random((2, 50))
    expected = np.array([[np.corrcoef(m, c)[0, 1] for c in centres] for m in maps])
    np.testing.assert_allclose(correlations(maps, centres), expected, atol=1e-12)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AD, progressive and stable MCI scans from the generator that trained the demo bundle, with
    subtypes planted among AD and pMCI."""
    folder = tmp_path_factory.mktemp("subtype_cohort")
    return write_cohort(folder, 24, n_sites=3, n_datasets=1, seed=21, diagnoses={"AD": 0.65, "pMCI": 0.25, "sMCI": 0.1})


@pytest.fixture(scope="module")
def found(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("subtypes")
    ran = run_train_cli("subtypes", "--model", default_bundle(), "--manifest", cohort, "--out", out, *FAST)
    assert ran.returncode == 0, ran.stderr
    assert "subtypes (elbow) among" in ran.stdout
    return out


def _planted(cohort: Path) -> dict[str, str]:
    with cohort.open() as f:
        return {row["subject"]: row["subtype"] for row in csv.DictReader(f)}


def _assignments(out: Path) -> list[dict[str, str]]:
    with (out / "assignments.tsv").open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.slow
def test_subtypes_of_a_synthetic_cohort_are_written_and_mci_scans_assigned_by_margin(cohort: Path, found: Path) -> None:
    planted, rows = _planted(cohort), _assignments(found)
    summary = json.loads((found / "subtypes.json").read_text())
    assert 1 <= summary["k"] <= 10 and len(summary["sum_of_squares"]) == 10
    assert summary["sum_of_squares"] == sorted(summary["sum_of_squares"], reverse=True)
    ad = [r for r in rows if r["diagnosis"] == "AD"]
    assert len(ad) == summary["ad_scans"] == sum(s["ad_scans"] for s in summary["subtypes"])
    sizes = [s["ad_scans"] for s in summary["subtypes"]]
    assert sizes == sorted(sizes, reverse=True)  # numbered by decreasing size
    # the demonstration ensemble sees medial-temporal atrophy: the subtype holding most of those
    # scans has its highest risk in the medial temporal lobe
    medial = Counter(r["subtype"] for r in ad if planted[r["subject"]] == "medial-temporal").most_common(1)[0][0]
    highest = [r["name"] for r in summary["subtypes"][int(medial) - 1]["highest_regions"][:3]]
    assert any(name.startswith(("Hippocampus", "ParaHippocampal", "Amygdala")) for name in highest), highest
    for r in rows:  # MCI scans go to the best centre unless the second is within the margin
        margin = float(r["best_r"]) - float(r["second_r"])
        if r["diagnosis"] != "AD":
            assert r["subtype"] == ("unassigned" if margin < 0.05 else r["best_subtype"])
    assert sum(s["mci"]["assigned"] for s in summary["subtypes"]) + summary["mci_unassigned"] == summary["mci_scans"]
    for subtype in summary["subtypes"]:
        image = nib.load(str(found / subtype["centre"]))
        assert image.shape == grid.MNI_SHAPE and np.allclose(image.affine, grid.MNI_AFFINE)
        assert len(subtype["highest_regions"]) == 5 and subtype["age"]["n"] == subtype["ad_scans"]
        share = subtype["mci"]["conversion_share"]
        assert share is None or share == pytest.approx(subtype["mci"]["pMCI"] / (subtype["mci"]["pMCI"] + subtype["mci"]["sMCI"]), abs=1e-3)
    assert (found / "subtype_centres.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_second_run_reads_the_risk_maps_back_and_other_settings_are_refused(cohort: Path, found: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(found / "risk_maps", out / "risk_maps")
    for path in (out / "risk_maps").glob("*.nii.gz"):
        path.chmod(0o444)  # read back, never rewritten
    again = run_train_cli("subtypes", "--model", default_bundle(), "--manifest", cohort, "--out", out, *FAST, "--k", "2")
    assert again.returncode == 0, again.stderr
    summary = json.loads((out / "subtypes.json").read_text())
    assert summary["k"] == 2 and summary["k_chosen_by"] == "given" and summary["sum_of_squares"] == []
    other = run_train_cli("subtypes", "--model", default_bundle(), "--manifest", cohort, "--out", out, "--fold", "0", "--step", "12")
    assert_input_error(other, "holds risk maps made with other settings")


@pytest.mark.slow
def test_bad_requests_are_refused_and_a_run_can_be_cancelled(cohort: Path, tmp_path: Path, tiny_bundle: Path) -> None:
    assert_input_error(
        run_train_cli("subtypes", "--model", tiny_bundle, "--manifest", cohort, "--out", tmp_path / "a"), "has no risk template"
    )
    assert_input_error(
        run_train_cli("subtypes", "--model", default_bundle(), "--manifest", cohort, "--out", tmp_path / "b", "--k", "0"), "needs 1 <= k"
    )
    no_ad = tmp_path / "no_ad.csv"
    with cohort.open() as f:
        lines = f.read().splitlines()
    no_ad.write_text("\n".join([lines[0], *(line for line in lines[1:] if ",AD," not in line)]) + "\n")
    (tmp_path / "maps").symlink_to(cohort.parent / "maps")
    assert_input_error(run_train_cli("subtypes", "--model", default_bundle(), "--manifest", no_ad, "--out", tmp_path / "c"), "no AD scans")
    with pytest.raises(Cancelled):
        run_subtypes(default_bundle(), cohort, tmp_path / "d", SubtypeSettings(fold=0), should_cancel=lambda: True)
    assert not (tmp_path / "d" / "subtypes.json").exists()
