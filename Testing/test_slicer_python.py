"""The Slicer module's path in a Python that holds only what a Slicer release bundles.

A fresh virtual environment gets exactly the packages that 3D Slicer 5.10.0 bundles
(``slicer_python/slicer-5.10.0-python.txt``), Slicer's MRML (slicer-core, which the Slicer
application provides itself) and torch as Slicer's PyTorch extension would install it. Then the
module's own first-use installer (``dependencies.plan`` and ``dependencies.install``, the code
path of the module's Run button) adds what is missing, and the module Logic's controller runs the
bundled sample T1 from T1 to heat map, scene and report, under strace: no file of the operating
system's data folders is read, and no image or atlas comes from outside the extension and the
environment's packages.

Slicer 5.10 ships Python 3.12; this environment uses the Python of the machine (3.11), for which
the CPU build of torch used here exists. Wheels for 3.12 on every platform are checked by
``scripts/check_wheels.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_GUARD_S, ROOT

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent / "slicer_python"
SLICER_RELEASE = "5.10.0"
SLICER_PACKAGES = HERE / f"slicer-{SLICER_RELEASE}-python.txt"
#: What the Slicer application itself provides to modules (its MRML and VTK), at the versions the
#: rest of the project tests with, and torch as Slicer's PyTorch extension installs it here.
PROVIDED_BY_SLICER = ("slicer-core", "vtk")
TORCH = "torch==2.13.0"
#: Folders of the operating system's data (Debian's packages install templates and atlases there),
#: and the tables of them that the C library and Python's standard library read on any system.
SYSTEM_DATA = ("/usr/share/", "/usr/local/share/", "/opt/")
SYSTEM_TABLES = ("/usr/share/locale/", "/usr/share/zoneinfo/")
#: Files that are images, atlases or label tables.
IMAGE_FILE = re.compile(r"\.(nii|nii\.gz|img|hdr|mnc|nrrd|nhdr|mha|mhd|mat|tsv)$")


def pinned(names: tuple[str, ...]) -> list[str]:
    """The versions of ``names`` in ``requirements/pinned.txt``."""
    lines = (ROOT / "requirements" / "pinned.txt").read_text().splitlines()
    found = [line for line in lines if line.split("==")[0].lower() in names]
    assert len(found) == len(names), names
    return found


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, **kwargs)
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def slicer_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh environment with Slicer 5.10.0's bundled packages only."""
    folder = tmp_path_factory.mktemp("slicer-python") / "venv"
    run([sys.executable, "-m", "venv", str(folder)])
    python = folder / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(SLICER_PACKAGES)])
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH, *pinned(PROVIDED_BY_SLICER)])
    return python


def environment(**extra: str) -> dict[str, str]:
    """A minimal environment: the library on the path as Slicer's module loader puts it."""
    return {"PYTHONPATH": str(ROOT / "BrainImageNetAD"), "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **extra}


def pip_list(python: Path) -> dict[str, str]:
    listed = json.loads(run([str(python), "-m", "pip", "list", "--format", "json"]).stdout)
    return {p["name"].lower(): p["version"] for p in listed}


@pytest.fixture(scope="module")
def installed(slicer_python: Path) -> tuple[dict[str, str], str]:
    """The module's first-use installer run in that environment: the packages before, and what it printed."""
    before = pip_list(slicer_python)
    script = (
        "from BrainImageNetADLib.core import dependencies\n"
        "plan = dependencies.plan()\n"
        "print('plan:', plan.describe())\n"
        "dependencies.install(plan)\n"
        "print('left:', dependencies.plan().requirements)\n"
    )
    return before, run([str(slicer_python), "-c", script], env=environment()).stdout


def test_the_module_installer_completes_slicers_python_without_touching_its_packages(
    slicer_python: Path, installed: tuple[dict[str, str], str]
) -> None:
    before, output = installed
    planned = output.split("plan:")[1].split("left:")[0]
    assert "antspyx" in planned and "spm-runtime" in planned and "nilearn" in planned
    assert "torch" not in planned and "numpy" not in planned  # present already: left alone
    assert output.strip().endswith("left: []"), output[-2000:]
    after = pip_list(slicer_python)
    for name, version in before.items():  # Slicer's numpy, SciPy, SimpleITK, requests... as Slicer ships them
        assert after[name] == version, (name, version, after[name])


def test_the_module_logic_runs_the_sample_case_in_slicers_python(
    slicer_python: Path, installed: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    strace = shutil.which("strace")
    assert strace is not None, "strace is missing (scripts/setup.sh installs it)"
    trace = tmp_path / "open.log"
    (tmp_path / "tmp").mkdir()
    env = environment(TMPDIR=str(tmp_path / "tmp"))
    command = [strace, "-f", "-qq", "-e", "trace=open,openat", "-e", "status=successful", "-o", str(trace)]
    run([*command, str(slicer_python), str(HERE / "run_case.py"), str(tmp_path / "case")], env=env)
    summary = json.loads((tmp_path / "case" / "summary.json").read_text())
    assert summary["state"] == "done", summary["message"]
    assert 0.0 < summary["probability"] < 1.0 and summary["folds"] == 5
    assert all(summary["nodes"].values()), summary["nodes"]
    assert summary["threshold"] == 0.37  # the threshold chosen before the run survived it
    assert Path(summary["report"]).is_file() and Path(summary["scene"]).is_file()
    opened = set(re.findall(r'open(?:at)?\((?:[^,]*, )?"([^"]+)"', trace.read_text()))
    assert any(path.endswith("colin27_t1.nii.gz") for path in opened), "the trace does not see the files read"
    system_data = sorted(p for p in opened if p.startswith(SYSTEM_DATA) and not p.startswith(SYSTEM_TABLES))
    assert not system_data, system_data
    allowed = (str(ROOT) + "/", str(slicer_python.parents[1]) + "/", str(tmp_path) + "/")
    foreign_images = sorted(p for p in opened if IMAGE_FILE.search(p) and not p.startswith(allowed))
    assert not foreign_images, foreign_images
