"""The synthetic cohort: planted effects are where they were planted, and the files are usable."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.explain.atlas import hippocampal_labels, region_mask
from BrainImageNetADLib.model.maps import load_model_input
from BrainImageNetTrainingLib.manifest import read_manifest
from BrainImageNetTrainingLib.synth import SUBTYPE_REGIONS, SUBTYPES, CohortGenerator, Site, write_cohort
from conftest import HANG_GUARD_S

pytestmark = pytest.mark.slow

QUIET_SITE = Site("site", "DS", gain=1.0, noise=0.02, smoothing=0.0, bias=0.0, field_strength=3.0)


@pytest.fixture(scope="module")
def generator() -> CohortGenerator:
    return CohortGenerator(seed=7)


def _region_means(maps: list[np.ndarray]) -> tuple[float, float]:
    labels = grid.crop_to_model_grid(hippocampal_labels())
    hippocampal = labels > 0
    occipital = np.zeros(grid.MODEL_SHAPE, bool)
    occipital[:, :25, 20:60] = True  # posterior slab, far from the medial temporal lobe
    return float(np.mean([m[hippocampal].mean() for m in maps])), float(np.mean([m[occipital].mean() for m in maps]))


def test_ad_atrophy_is_medial_temporal(generator: CohortGenerator) -> None:
    nc = [generator.subject("NC", "F", 72.0, QUIET_SITE)[0] for _ in range(3)]
    ad = [generator.subject("AD", "F", 72.0, QUIET_SITE)[0] for _ in range(3)]
    nc_hippo, nc_occ = _region_means(nc)
    ad_hippo, ad_occ = _region_means(ad)
    hippocampal_loss, occipital_loss = 1 - ad_hippo / nc_hippo, 1 - ad_occ / nc_occ
    assert hippocampal_loss > 0.3  # planted: strongest at the medial temporal core
    assert 0 < occipital_loss < 0.15 and hippocampal_loss > 3 * occipital_loss  # elsewhere: the mild global loss


def test_planted_subtypes_lose_grey_matter_where_named() -> None:
    generator = CohortGenerator(seed=8)
    regions = {"medial-temporal": grid.crop_to_model_grid(region_mask(templates.AAL_HIPPOCAMPI.values()))}
    for subtype, focus in SUBTYPE_REGIONS.items():
        regions[subtype] = grid.crop_to_model_grid(region_mask(focus))
    nc = np.mean([generator.subject("NC", "F", 72.0, QUIET_SITE)[0] for _ in range(3)], axis=0)
    loss = {}
    for subtype in SUBTYPES:
        ad = np.mean([generator.subject("AD", "F", 72.0, QUIET_SITE, subtype)[0] for _ in range(3)], axis=0)
        loss[subtype] = {name: 1 - ad[inside].mean() / nc[inside].mean() for name, inside in regions.items()}
    for subtype in SUBTYPES:  # each subtype loses most in its own focus, at least twice as much as elsewhere
        others = [loss[subtype][region] for region in SUBTYPES if region != subtype]
        assert loss[subtype][subtype] > 2 * max(others) > 0, (subtype, loss[subtype])


def test_subtypes_are_planted_among_ad_and_progressive_mci_only(tmp_path: Path) -> None:
    import csv

    manifest = write_cohort(tmp_path, 12, n_sites=2, n_datasets=1, seed=3, diagnoses={"AD": 0.4, "pMCI": 0.2, "sMCI": 0.2, "NC": 0.2})
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["diagnosis"] for r in rows} == {"AD", "pMCI", "sMCI", "NC"}
    for row in rows:
        assert (row["subtype"] in SUBTYPES) if row["diagnosis"] in ("AD", "pMCI") else row["subtype"] == ""
    with pytest.raises(ValueError, match="must sum to 1"):
        write_cohort(tmp_path / "bad", 2, diagnoses={"AD": 0.5})


def test_left_hippocampus_loses_more() -> None:
    """The same people (same seeds: same anatomy and noise) as NC and as AD: the planted loss is
    stronger in the left hippocampus than in the right."""
    labels = grid.crop_to_model_grid(hippocampal_labels())
    maps = {d: np.mean([CohortGenerator(seed).subject(d, "M", 70.0, QUIET_SITE)[0] for seed in range(3)], axis=0) for d in ("NC", "AD")}
    left_loss, right_loss = (1 - maps["AD"][labels == side].mean() / maps["NC"][labels == side].mean() for side in (37, 38))
    assert left_loss > 1.05 * right_loss > 0.05


def test_mci_lies_between_nc_and_ad(generator: CohortGenerator) -> None:
    severity = {d: np.mean([generator.subject(d, "F", 72.0, QUIET_SITE)[2] for _ in range(6)]) for d in ("NC", "sMCI", "pMCI", "AD")}
    assert severity["NC"] == 0.0 < severity["sMCI"] < severity["pMCI"] < severity["AD"]


def test_males_have_larger_heads_in_gmv(generator: CohortGenerator) -> None:
    ratios = {}
    for sex in ("F", "M"):
        pairs = [generator.subject("NC", sex, 70.0, QUIET_SITE)[:2] for _ in range(4)]
        ratios[sex] = np.mean([gmv.sum() / gmd.sum() for gmd, gmv in pairs])
    assert ratios["M"] > 1.05 * ratios["F"]


def test_site_noise_has_the_planted_level() -> None:
    """Same seed, same subject: the maps differ only by the site's noise."""
    from dataclasses import replace

    clean = CohortGenerator(seed=5).subject("NC", "F", 70.0, replace(QUIET_SITE, noise=0.0))[0]
    brain = (clean > 0.3) & (clean < 0.7)  # away from the clipping at 0 and 1
    for level in (0.02, 0.08):
        noisy = CohortGenerator(seed=5).subject("NC", "F", 70.0, replace(QUIET_SITE, noise=level))[0]
        assert float((noisy - clean)[brain].std()) == pytest.approx(level, rel=0.1)


def test_written_cohort_is_a_valid_reproducible_manifest(tmp_path: Path) -> None:
    manifest = write_cohort(tmp_path / "a", 6, n_sites=3, n_datasets=2, seed=11)
    scans = read_manifest(manifest)
    assert len(scans) == 6 and {s.site for s in scans} == {"site00", "site01", "site02"}
    assert {s.dataset for s in scans} == {"DS1", "DS2"}
    x, _ = load_model_input({"GMD": scans[0].gmd, "GMV": scans[0].gmv}, ["GMD", "GMV"])
    assert x.shape == (2, *grid.MODEL_SHAPE)
    again = write_cohort(tmp_path / "b", 6, n_sites=3, n_datasets=2, seed=11)
    assert again.read_text() == manifest.read_text()
    np.testing.assert_array_equal(
        np.asanyarray(nib.load(str(tmp_path / "a" / "maps" / "sub-c11n0003_gmv.nii.gz")).dataobj),
        np.asanyarray(nib.load(str(tmp_path / "b" / "maps" / "sub-c11n0003_gmv.nii.gz")).dataobj),
    )


def test_synth_command_writes_a_cohort(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "BrainImageNetTrainingLib.cli",
        "synth",
        "--out",
        str(tmp_path),
        "--subjects",
        "3",
        "--sites",
        "2",
        "--datasets",
        "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr
    assert len(read_manifest(tmp_path / "manifest.csv")) == 3
    bad = subprocess.run([*command[:-4], "--sites", "1", "--datasets", "2"], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
