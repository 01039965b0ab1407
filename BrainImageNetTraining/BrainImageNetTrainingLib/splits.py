"""Cross-validation splits of the paper with a hard guard against subject leakage.

- Leave-datasets-out (base networks) and leave-sites-out (AD): whole groups go to one test fold;
  the largest groups can be kept in training always; the allocation of the other groups to the
  folds is the most size-balanced of many seeded random allocations.
- A subject never appears on both sides: groups that share a subject are merged before
  allocation, and ``check_no_leakage`` is called on every split made here and by every entry point
  that receives a split.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from BrainImageNetADLib.core.errors import InputError

from .manifest import Scan


class LeakageError(InputError):
    """A subject appears both in training (or validation) and in testing."""


@dataclass(frozen=True)
class Fold:
    """Indices into the manifest's scans: ``train``, ``validation`` (taken from training) and ``test``."""

    index: int
    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]
    test_groups: tuple[str, ...]


def check_no_leakage(scans: Sequence[Scan], train: Sequence[int], test: Sequence[int], what: str = "training and testing") -> None:
    """Raise LeakageError naming the subjects found on both sides (indices into ``scans``)."""
    shared = sorted({scans[i].subject for i in train} & {scans[i].subject for i in test})
    if shared:
        raise LeakageError(
            f"{len(shared)} subjects are in both {what} (e.g. {', '.join(shared[:3])}); a subject's scans must stay on one side"
        )


def _merged_groups(scans: Sequence[Scan], key: str) -> list[str]:
    """Group label of each scan by ``key`` (``dataset`` or ``site``), merging groups that share a
    subject (union-find) so that no allocation of groups can split a subject."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first_group: dict[str, str] = {}
    for scan in scans:
        group = getattr(scan, key)
        find(group)
        if scan.subject in first_group:
            parent[find(group)] = find(first_group[scan.subject])
        else:
            first_group[scan.subject] = group
    roots = {find(getattr(s, key)) for s in scans}
    members = {root: sorted(g for g in parent if find(g) == root) for root in roots}
    return ["+".join(members[find(getattr(s, key))]) for s in scans]


def leave_groups_out(
    scans: Sequence[Scan],
    key: str = "site",
    n_folds: int = 5,
    always_train: int = 0,
    n_validation: int = 600,
    n_allocations: int = 10_000,
    seed: int = 0,
) -> list[Fold]:
    """Folds in which each group (``dataset`` or ``site``) is tested in exactly one fold.

    The ``always_train`` largest groups (by scans) are never tested (the paper keeps ABCD, UK
    Biobank and ADNI in training for the sex classifier). The remaining groups are allocated to
    ``n_folds`` folds: of ``n_allocations`` seeded random allocations leaving no fold empty, the one
    with the smallest spread of test-fold sizes is kept. Validation: ``n_validation`` scans (whole
    subjects) drawn from each fold's training part (at most a fifth of it).
    """
    groups = _merged_groups(scans, key)
    sizes = Counter(groups)
    ordered = sorted(sizes, key=lambda g: (-sizes[g], g))
    fixed, free = ordered[:always_train], ordered[always_train:]
    if len(free) < n_folds:
        raise InputError(
            f"{len(free)} {key}s left to test after keeping {always_train} in training; {n_folds} folds need at least {n_folds} (groups sharing subjects count as one)"
        )
    rng = np.random.default_rng(seed)
    free_sizes = np.array([sizes[g] for g in free])
    best, best_spread = None, np.inf
    for _ in range(n_allocations):
        allocation = rng.integers(0, n_folds, size=len(free))
        allocation[rng.permutation(len(free))[:n_folds]] = np.arange(n_folds)  # no empty fold
        fold_sizes = np.bincount(allocation, weights=free_sizes, minlength=n_folds)
        spread = float(fold_sizes.std())
        if spread < best_spread:
            best, best_spread = allocation.copy(), spread
    assert best is not None
    fold_of = {g: int(f) for g, f in zip(free, best, strict=True)}
    fold_of.update({g: -1 for g in fixed})
    folds: list[Fold] = []
    for f in range(n_folds):
        test = [i for i, g in enumerate(groups) if fold_of[g] == f]
        rest = [i for i, g in enumerate(groups) if fold_of[g] != f]
        train, validation = validation_split(scans, rest, n_validation, rng)
        check_no_leakage(scans, train + validation, test)
        check_no_leakage(scans, train, validation, "training and validation")
        folds.append(Fold(f, tuple(train), tuple(validation), tuple(test), tuple(sorted(g for g in free if fold_of[g] == f))))
    return folds


def validation_split(scans: Sequence[Scan], indices: list[int], n_validation: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Split ``indices`` into (train, validation): whole subjects, drawn at random, until the
    validation part holds ``n_validation`` scans (at most a fifth of ``indices``)."""
    subjects = sorted({scans[i].subject for i in indices})
    target = min(n_validation, len(indices) // 5)
    chosen: set[str] = set()
    count = 0
    per_subject = Counter(scans[i].subject for i in indices)
    for subject in rng.permutation(subjects):
        if count >= target:
            break
        chosen.add(str(subject))
        count += per_subject[str(subject)]
    validation = [i for i in indices if scans[i].subject in chosen]
    train = [i for i in indices if scans[i].subject not in chosen]
    return train, validation
