"""Shared fixtures: real networks, real bundles written to temporary folders, the shipped sample,
SPM12's tissue priors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.core.resources import sample_maps, sample_t1
from BrainImageNetADLib.model.bundle import save_bundle
from BrainImageNetADLib.model.networks import build_network
from BrainImageNetADLib.preprocessing import deformation

ROOT = Path(__file__).resolve().parents[1]
#: Seconds after which a test gives up on a child process or a run: only a guard against hangs.
#: Generous on purpose: on a loaded machine a run that takes two minutes can take ten times longer.
HANG_GUARD_S = 3600
#: The Colin27 T1 (the shipped sample case), the real scan most tests preprocess.
COLIN27_T1 = sample_t1()
#: Real scans of people (README there), read in place from beside the checkout.
REALDATA = ROOT.parent / "shared" / "realdata"
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason="the real scans (../shared/realdata) are not beside this checkout")

#: ROC operating points written into the test bundle's card.
TEST_OPERATING_POINTS = [
    {"threshold": 0.2, "sensitivity": 0.95, "specificity": 0.70},
    {"threshold": 0.5, "sensitivity": 0.85, "specificity": 0.90},
    {"threshold": 0.8, "sensitivity": 0.60, "specificity": 0.98},
]


#: Fixtures that preprocess real scans, the longest first.
SHARED_PREPROCESSING = ("real_scan_runs", "colin")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the files for parallel workers (``scripts/test.sh`` keeps this order with
    ``--no-loadscope-reorder``): first those using a fixture of ``SHARED_PREPROCESSING``, in its
    order, so that the longest preprocessing starts at once; then the files holding a test marked
    slow; then the rest, which fills in at the end. Tests keep their order within a file."""
    rank: dict[Path, tuple[int, int]] = {}
    for item in items:
        used = [i for i, name in enumerate(SHARED_PREPROCESSING) if name in getattr(item, "fixturenames", ())]
        own = (min(used, default=len(SHARED_PREPROCESSING)), 0 if item.get_closest_marker("slow") else 1)
        rank[item.path] = min(rank.get(item.path, own), own)
    items.sort(key=lambda item: rank[item.path])


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> object:
    """``make(folder)`` run once per test run, by whichever worker process asks first; the others
    wait for it and read what it returned (JSON). With ``pytest -n 2 --dist loadfile`` (as
    ``scripts/test.sh`` runs the suite) the tests of a file share a worker, and a session fixture
    used by several files would otherwise be made in each worker that runs one of them."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, made = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not made.is_file():
            folder.mkdir(exist_ok=True)
            made.write_text(json.dumps(make(folder)))
    return json.loads(made.read_text())


def make_card(architecture: str = "ad_transfer", preset: str = "tiny", channels: tuple[str, ...] = ("GMD", "GMV")) -> dict:
    return {
        "name": "test bundle",
        "architecture": architecture,
        "preset": preset,
        "input": {"channels": list(channels), "shape": list(grid.MODEL_SHAPE)},
        "training_data": "none (test)",
        "demo": True,
        "trained": False,
        "intended_use": "tests only",
        "operating_points": TEST_OPERATING_POINTS,
        "threshold_presets": {"balanced": 0.5, "screening": 0.2},
    }


def randomise_batch_norm(model: torch.nn.Module, seed: int) -> None:
    """Give batch-norm layers non-trivial running statistics, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-fold tiny AD bundle with distinct random weights and known operating points."""
    models = []
    for fold in range(3):
        torch.manual_seed(100 + fold)
        model = build_network("ad_transfer", "tiny", 2)
        randomise_batch_norm(model, fold)
        models.append(model.eval())
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny", models, make_card())


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may corrupt."""
    target = tmp_path / "bundle"
    target.mkdir()
    for f in tiny_bundle.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


@pytest.fixture(scope="session")
def colin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Colin27 preprocessed once for the whole test run, in a child process as the command line
    does: (output folder, QC report). Tests read it and never write into it."""
    from BrainImageNetADLib.core.worker import run_isolated
    from BrainImageNetADLib.preprocessing.preprocess import preprocess_t1

    folder = made_once(tmp_path_factory, "colin", lambda out: [str(out), run_isolated(preprocess_t1, COLIN27_T1, out)])
    return Path(folder[0]), folder[1]


@pytest.fixture(scope="session")
def sampler() -> deformation.PriorSampler:
    """SPM12's tissue priors with their gradients, built once for the session."""
    return deformation.PriorSampler(templates.spm_tissue_priors())


@pytest.fixture(scope="session")
def sample() -> dict[str, Path]:
    return sample_maps()


def edit_card(bundle_dir: Path, **changes: object) -> None:
    path = bundle_dir / "model_card.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def assert_input_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    """The command failed with exit code 2 and one ``error: ...`` line containing ``message``."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
