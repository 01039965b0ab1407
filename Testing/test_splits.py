"""Manifests and the paper's cross-validation splits, with the subject-leakage guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from BrainImageNetADLib.core.errors import InputError
from BrainImageNetTrainingLib.manifest import Scan, read_manifest
from BrainImageNetTrainingLib.splits import LeakageError, check_no_leakage, leave_groups_out

HEADER = "subject,session,dataset,site,diagnosis,sex,age,mmse,field_strength\n"


def _cohort(seed: int = 0) -> list[Scan]:
    """Scans of 12 sites of unequal sizes, 1-3 sessions per subject."""
    rng = np.random.default_rng(seed)
    scans = []
    for site in range(12):
        for subject in range(int(rng.integers(5, 40))):
            for session in range(int(rng.integers(1, 4))):
                scans.append(
                    Scan(f"s{site}-{subject}", f"D{site % 4}", f"site{site}", "AD" if subject % 3 == 0 else "NC", session=f"ses-{session}")
                )
    return scans


def test_manifest_is_read_and_typed(tmp_path: Path) -> None:
    (tmp_path / "gmd.nii.gz").write_bytes(b"x")
    path = tmp_path / "m.csv"
    path.write_text("subject,session,dataset,site,diagnosis,sex,age,mmse,gmd\nA,1,ADNI,s1,AD,F,71.5,22,gmd.nii.gz\nB,,ADNI,s2,NC,M,,n/a,\n")
    scans = read_manifest(path)
    assert scans[0] == Scan("A", "ADNI", "s1", "AD", session="1", sex="F", age=71.5, mmse=22.0, gmd=tmp_path / "gmd.nii.gz")
    assert scans[1].age is None and scans[1].mmse is None and scans[1].gmd is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("subject,site,diagnosis\nA,s,AD\n", "missing columns ['dataset']"),
        (HEADER + "A,1,D,s,XX,F,70,20,3\n", "m.csv:2: diagnosis 'XX' is not one of"),
        (HEADER + "A,1,D,,AD,F,70,20,3\n", "m.csv:2: empty site"),
        (HEADER + "A,1,D,s,AD,F,170,20,3\n", "m.csv:2: column age = 170.0 is outside 0-120"),
        (HEADER + "A,1,D,s,AD,F,70,31,3\n", "column mmse = 31.0 is outside 0-30"),
        (HEADER + "A,1,D,s,AD,female,70,20,3\n", "sex 'female' is not one of"),
        (HEADER + "A,1,D,s,AD,F,70,20,3\nA,1,D,s,AD,F,70,20,3\n", "m.csv:3: subject A session 1 already listed on line 2"),
        ("subject,dataset,site,diagnosis,gmd\nA,D,s,AD,missing.nii.gz\n", "gmd file not found"),
        (HEADER, "no rows"),
    ],
)
def test_bad_manifests_are_explained(tmp_path: Path, rows: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(rows)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        read_manifest(path)


def test_leave_sites_out_tests_each_site_once_without_leakage() -> None:
    scans = _cohort()
    folds = leave_groups_out(scans, "site", n_validation=30, n_allocations=2000, seed=1)
    tested = [i for fold in folds for i in fold.test]
    assert sorted(tested) == list(range(len(scans)))  # every scan tested exactly once
    for fold in folds:
        test_sites = {scans[i].site for i in fold.test}
        assert not test_sites & {scans[i].site for i in fold.train + fold.validation}
        assert not {scans[i].subject for i in fold.validation} & {scans[i].subject for i in fold.train}
        assert 0 < len(fold.validation) <= 30 + 3  # whole subjects, up to 3 sessions over
        assert set(fold.train) | set(fold.validation) | set(fold.test) == set(range(len(scans)))


def test_allocation_is_the_most_balanced_and_reproducible() -> None:
    scans = _cohort()
    spread = {}
    for n in (1, 2000):
        folds = leave_groups_out(scans, "site", n_allocations=n, seed=3)
        spread[n] = float(np.std([len(f.test) for f in folds]))
    assert spread[2000] <= spread[1]
    again = leave_groups_out(scans, "site", n_allocations=2000, seed=3)
    assert [f.test for f in again] == [f.test for f in leave_groups_out(scans, "site", n_allocations=2000, seed=3)]


def test_largest_datasets_stay_in_training() -> None:
    scans = _cohort()
    sizes = {d: sum(s.dataset == d for s in scans) for d in {s.dataset for s in scans}}
    largest = max(sizes, key=sizes.get)
    with pytest.raises(InputError, match="3 datasets left to test"):
        leave_groups_out(scans, "dataset", n_folds=5, always_train=1)
    folds = leave_groups_out(scans, "dataset", n_folds=3, always_train=1, n_allocations=100)
    assert all(largest not in fold.test_groups for fold in folds)
    assert all(any(scans[i].dataset == largest for i in fold.train) for fold in folds)


def test_sites_sharing_a_subject_are_tested_together() -> None:
    scans = _cohort()
    moved = Scan("s0-0", "D1", "site5", "AD", session="ses-9")  # subject of site0 rescanned at site5
    folds = leave_groups_out([*scans, moved], "site", n_allocations=500)
    fold = next(f for f in folds if len(scans) in f.test)
    assert "site0+site5" in fold.test_groups


def test_the_guard_names_leaking_subjects() -> None:
    scans = _cohort()
    with pytest.raises(LeakageError, match="1 subjects are in both training and testing"):
        check_no_leakage(scans, [0, 1], [1])
    check_no_leakage(scans, [0], [len(scans) - 1])
