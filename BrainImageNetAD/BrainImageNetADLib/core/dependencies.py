"""The run-time Python packages, read from the one list in ``pyproject.toml``, and their installation
into the running interpreter (Slicer's Python, or any other) with pip.

``[project] dependencies`` names what the library imports at run time; ``[tool.brainimagenet-ad]``
names the packages installed without their dependencies (``no-deps``: packages used only for the
data they ship) and an approximate download size of each (``download-mb``). The Slicer module's
first-use installer, ``scripts/setup.sh`` and the tests all read that file through this module.

Installing changes nothing that is already installed: every distribution present in the
interpreter that is not itself being installed is pinned at its version in a pip constraints file,
so Slicer's bundled numpy, SciPy, SimpleITK, requests... stay as Slicer ships them (pip then
refuses with its own message rather than replace them).

This module uses the standard library only (``packaging`` where present) and parses on Python 3.9,
so that Slicer 5.8 and older can load it and say which Slicer release is needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

#: The oldest Python the library runs on, and the first Slicer release that ships one.
MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = "5.10"
#: Section of ``pyproject.toml`` with the installation details.
TOOL_TABLE = "brainimagenet-ad"


class InstallError(Exception):
    """pip failed, or the package list cannot be read: the message says which and why."""


def python_problem(version_info: Sequence[int] = tuple(sys.version_info)) -> str | None:
    """A one-line reason why this Python cannot run the library, or None when it can."""
    if tuple(version_info[:2]) >= MINIMUM_PYTHON:
        return None
    have = ".".join(str(v) for v in version_info[:3])
    need = ".".join(str(v) for v in MINIMUM_PYTHON)
    return (
        f"BrainImageNet AD needs Python {need} or newer, and this Python is {have}: "
        f"use 3D Slicer {MINIMUM_SLICER} or newer (Slicer 5.8 and older ship Python 3.9)"
    )


def pyproject_path() -> Path:
    """``pyproject.toml`` of the source tree, or the copy an installed Slicer extension carries in
    the module's ``Resources`` folder."""
    library = Path(__file__).resolve().parents[1]  # the BrainImageNetADLib folder
    candidates = [library.parents[1] / "pyproject.toml", library.parent / "Resources" / "pyproject.toml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InstallError(f"the package list is missing (looked for {' and '.join(map(str, candidates))}): reinstall the extension")


def _read_pyproject(path: Path | None = None) -> dict:
    try:
        import tomllib
    except ImportError as error:  # Python 3.10: only the Slicer installer needs it, and Slicer 5.10 ships 3.12
        raise InstallError("reading the package list needs Python 3.11 or newer (tomllib)") from error
    path = path or pyproject_path()
    with open(path, "rb") as file:
        return tomllib.load(file)


def runtime_requirements(path: Path | None = None) -> list[str]:
    """The run-time requirements installed with their dependencies (pip requirement strings)."""
    return list(_read_pyproject(path)["project"]["dependencies"])


def no_deps_requirements(path: Path | None = None) -> list[str]:
    """The run-time requirements installed with ``pip --no-deps`` (pip requirement strings)."""
    return list(_read_pyproject(path).get("tool", {}).get(TOOL_TABLE, {}).get("no-deps", []))


def download_mb(path: Path | None = None) -> dict[str, float]:
    """Approximate download size in MB of each run-time package (normalised name -> MB)."""
    table = _read_pyproject(path).get("tool", {}).get(TOOL_TABLE, {}).get("download-mb", {})
    return {normalise(name): float(mb) for name, mb in table.items()}


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503: lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a pip requirement string (``"torch>=2.2"`` -> ``"torch"``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise InstallError(f"not a requirement: {requirement!r}")
    return normalise(match.group(1))


def installed_versions() -> dict[str, str]:
    """Every distribution installed in this interpreter: normalised name -> version."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions.setdefault(normalise(name), distribution.version)
    return versions


def is_satisfied(requirement: str, installed: dict[str, str]) -> bool:
    """Whether ``requirement`` holds for the ``installed`` versions (by name alone where the
    ``packaging`` library is absent)."""
    version = installed.get(requirement_name(requirement))
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return True
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate():
        return True
    return parsed.specifier.contains(version, prereleases=True)


class InstallPlan:
    """What is missing from this interpreter: ``with_deps`` and ``no_deps`` are pip requirement
    strings (installed with and without their dependencies); ``installed`` the versions present."""

    def __init__(self, with_deps: list[str], no_deps: list[str], installed: dict[str, str], sizes: dict[str, float]) -> None:
        self.with_deps = with_deps
        self.no_deps = no_deps
        self.installed = installed
        self.sizes = sizes

    @property
    def requirements(self) -> list[str]:
        return self.with_deps + self.no_deps

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def names(self) -> list[str]:
        """The distribution names to install, in order."""
        return [requirement_name(r) for r in self.requirements]

    def approximate_mb(self) -> float:
        """Approximate download in MB of the listed packages (their own dependencies come on top)."""
        return sum(self.sizes.get(name, 1.0) for name in self.names())

    def describe(self) -> str:
        """One line for a person: the packages and the approximate download."""
        listed = ", ".join(f"{name} (~{self.sizes[name]:.0f} MB)" if name in self.sizes else name for name in self.names())
        return f"{listed}; about {self.approximate_mb():.0f} MB in all, with their own dependencies on top"

    def constraints(self) -> str:
        """pip constraints that keep every installed distribution that is not being installed at
        its version (one ``name==version`` a line)."""
        replaced = set(self.names())
        return "".join(f"{name}=={version}\n" for name, version in sorted(self.installed.items()) if name not in replaced)


def plan(path: Path | None = None, skip: Sequence[str] = ()) -> InstallPlan:
    """The run-time requirements this interpreter lacks (``skip``: names installed another way,
    e.g. torch by Slicer's PyTorch extension)."""
    installed = installed_versions()
    skipped = {normalise(name) for name in skip}

    def missing(requirements: list[str]) -> list[str]:
        return [r for r in requirements if requirement_name(r) not in skipped and not is_satisfied(r, installed)]

    return InstallPlan(missing(runtime_requirements(path)), missing(no_deps_requirements(path)), installed, download_mb(path))


def pip_commands(python: str, install_plan: InstallPlan, constraints_file: Path, wheel_dir: Path | None = None) -> list[list[str]]:
    """The pip command lines that carry out ``install_plan`` with the interpreter ``python``
    (``wheel_dir``: install offline from a folder of wheel files)."""
    base = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    if wheel_dir is not None:
        base += ["--no-index", "--find-links", str(wheel_dir)]
    commands = []
    if install_plan.with_deps:
        commands.append([*base, "--constraint", str(constraints_file), *install_plan.with_deps])
    if install_plan.no_deps:
        commands.append([*base, "--no-deps", *install_plan.no_deps])
    return commands


def _hidden_console() -> dict:
    """Popen arguments that keep a console window from opening on Windows."""
    if os.name != "nt":
        return {}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    return {"startupinfo": info, "creationflags": subprocess.CREATE_NO_WINDOW}


def install(
    install_plan: InstallPlan,
    python: str | None = None,
    wheel_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Install ``install_plan`` with pip into the interpreter ``python`` (default: this one),
    calling ``progress(line)`` with each line pip prints. Raises InstallError with pip's last lines
    when it fails."""
    if wheel_dir is not None and not Path(wheel_dir).is_dir():
        raise InstallError(f"wheel folder not found: {wheel_dir}")
    with tempfile.TemporaryDirectory(prefix="brainimagenet-ad-pip-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(install_plan.constraints())
        for command in pip_commands(python or sys.executable, install_plan, constraints, wheel_dir):
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", **_hidden_console()
            )
            assert process.stdout is not None
            lines: list[str] = []
            for line in process.stdout:
                lines.append(line.rstrip())
                if progress is not None and line.strip():
                    progress(line.strip())
            if process.wait() != 0:
                tail = "\n".join(line for line in lines[-12:] if line)
                raise InstallError(f"pip could not install {' '.join(command[command.index('install') + 1 :])}:\n{tail}")


def needs_restart(install_plan: InstallPlan) -> bool:
    """Whether a package being installed was already imported in this process (then the
    application must restart to use the new one)."""
    from importlib import metadata

    importing = set(install_plan.names())
    for module, distributions in metadata.packages_distributions().items():
        if module in sys.modules and any(normalise(d) in importing for d in distributions):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m BrainImageNetADLib.core.dependencies {runtime,no-deps,missing}``: print the
    requirements of that kind, one a line (``missing``: what this interpreter lacks)."""
    args = list(sys.argv[1:] if argv is None else argv)
    kind = args[0] if args else "missing"
    if kind == "runtime":
        lines = runtime_requirements()
    elif kind == "no-deps":
        lines = no_deps_requirements()
    elif kind == "missing":
        lines = plan().requirements
    else:
        print("usage: python -m BrainImageNetADLib.core.dependencies {runtime,no-deps,missing}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
