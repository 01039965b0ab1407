"""The run-time packages: one list (pyproject.toml) read by pip, scripts/setup.sh and the Slicer
module's installer; the installer's pip calls, offline from a wheel folder included; the Python
version check that older Slicer releases see; no system path in the library."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from BrainImageNetADLib.core import dependencies
from conftest import HANG_GUARD_S, ROOT

LIBRARY_FOLDERS = ("BrainImageNetAD", "BrainImageNetTraining")
#: Absolute paths of an operating system's folders (POSIX and Windows).
SYSTEM_PATH = re.compile(r"^(/(usr|etc|opt|var|lib|lib64|bin|sbin|srv|home|root|Library|Applications|System)(/|$)|[A-Za-z]:[\\/])")


def _python_39() -> str | None:
    """Python 3.9, the Python of Slicer 5.8 and older, where this machine has one that runs."""
    for candidate in [*sorted(map(str, Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))), shutil.which("python3.9")]:
        if candidate and subprocess.run([candidate, "--version"], capture_output=True, timeout=HANG_GUARD_S).returncode == 0:
            return candidate
    return None


PYTHON_39 = _python_39()


def test_the_library_names_no_path_of_the_operating_system() -> None:
    found = []
    for folder in LIBRARY_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and SYSTEM_PATH.match(node.value):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert not found, found


def test_pyproject_is_the_one_list_of_run_time_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert dependencies.runtime_requirements() == project["project"]["dependencies"]
    assert dependencies.no_deps_requirements() == ["spm-runtime==25.1.2.post4"]
    names = [dependencies.requirement_name(r) for r in dependencies.runtime_requirements() + dependencies.no_deps_requirements()]
    # No second hand-kept list: neither the Slicer module nor the set-up script names a package.
    for path in (ROOT / "BrainImageNetAD" / "BrainImageNetAD.py", ROOT / "scripts" / "setup.sh"):
        text = path.read_text().lower()
        named = {n for n in names if re.search(rf"[\"' ]{re.escape(n)}[\"' =<>]", text)}
        assert named <= {"torch"}, (path, named)  # torch alone: Slicer's PyTorch extension installs it where present
    # The test environment, pinned in requirements/pinned.txt and set up by setup.sh, holds them all.
    pinned = {
        dependencies.requirement_name(line) for line in (ROOT / "requirements" / "pinned.txt").read_text().splitlines() if "==" in line
    }
    assert set(names) - {"spm-runtime"} <= pinned
    assert not dependencies.plan(), dependencies.plan().requirements
    assert set(dependencies.download_mb()) == set(names)


def test_the_plan_keeps_every_installed_package_that_it_does_not_install() -> None:
    installed = {"numpy": "2.0.2", "simpleitk": "2.5.2", "nibabel": "3.2.0", "torch": "2.13.0"}
    plan = dependencies.InstallPlan(["nibabel", "antspyx"], ["spm-runtime==25.1.2.post4"], installed, {"antspyx": 30.0})
    assert plan.constraints() == "numpy==2.0.2\nsimpleitk==2.5.2\ntorch==2.13.0\n"
    assert plan.names() == ["nibabel", "antspyx", "spm-runtime"] and plan.approximate_mb() == 32.0
    assert "antspyx (~30 MB)" in plan.describe()
    assert dependencies.is_satisfied("numpy>=2", installed) and not dependencies.is_satisfied("nibabel>=5", installed)
    assert not dependencies.is_satisfied("antspyx", installed)
    assert dependencies.requirement_name("scikit_learn>=1.3") == "scikit-learn"


def _wheel(folder: Path, name: str, requires: list[str], out: Path) -> None:
    """Build a one-module wheel ``name`` 1.0 that requires ``requires``."""
    source = folder / name
    (source / name).mkdir(parents=True)
    (source / name / "__init__.py").write_text("VALUE = 1\n")
    (source / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "1.0"\ndependencies = {requires!r}\n'.replace("'", '"')
    )
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=HANG_GUARD_S)


def test_the_installer_installs_offline_from_a_wheel_folder_and_reports_what_failed(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _wheel(tmp_path, "tinylib", ["tinydep"], wheels)
    _wheel(tmp_path, "tinydep", [], wheels)
    _wheel(tmp_path, "tinydata", ["not-on-any-index"], wheels)  # installed without its dependency
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=HANG_GUARD_S)
    python = str(tmp_path / "venv" / "bin" / "python")
    lines: list[str] = []
    plan = dependencies.InstallPlan(["tinylib==1.0"], ["tinydata"], {}, {})
    dependencies.install(plan, python=python, wheel_dir=wheels, progress=lines.append)
    check = "import tinylib, tinydep, tinydata; print(tinylib.VALUE + tinydep.VALUE + tinydata.VALUE)"
    assert subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=HANG_GUARD_S).stdout.strip() == "3"
    assert any("tinylib" in line for line in lines)
    with pytest.raises(dependencies.InstallError, match="pip could not install .*nothere"):
        dependencies.install(dependencies.InstallPlan(["nothere"], [], {}, {}), python=python, wheel_dir=wheels)
    with pytest.raises(dependencies.InstallError, match="wheel folder not found"):
        dependencies.install(plan, python=python, wheel_dir=tmp_path / "missing")


def test_python_older_than_slicer_5_10_gets_one_line_naming_the_release() -> None:
    assert dependencies.python_problem((3, 12, 10)) is None and dependencies.python_problem((3, 10, 0)) is None
    assert "Slicer 5.10 or newer" in dependencies.python_problem((3, 9, 10))


@pytest.mark.skipif(PYTHON_39 is None, reason="no Python 3.9 on this machine")
def test_python_3_9_loads_the_module_and_its_check(tmp_path: Path) -> None:
    """Slicer 5.8 ships Python 3.9: the module file and the check parse and run there."""
    module = ROOT / "BrainImageNetAD" / "BrainImageNetAD.py"
    env = {"PYTHONPATH": str(ROOT / "BrainImageNetAD"), "PYTHONPYCACHEPREFIX": str(tmp_path)}
    compiled = subprocess.run(
        [str(PYTHON_39), "-m", "py_compile", str(module)], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S
    )
    assert compiled.returncode == 0, compiled.stderr
    script = "from BrainImageNetADLib.core.dependencies import python_problem; print(python_problem())"
    result = subprocess.run([str(PYTHON_39), "-c", script], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr
    assert "needs Python 3.10 or newer, and this Python is 3.9" in result.stdout and "Slicer 5.10" in result.stdout
