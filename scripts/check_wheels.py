"""Check that binary wheels of every run-time package exist for the readers' computers.

For Windows x86_64, macOS arm64 and x86_64 and Linux x86_64, at the Python of current 3D Slicer
releases (3.12), the run-time requirements of ``pyproject.toml`` are resolved as binary wheels
only, for that platform (``uv pip compile --python-platform ... --only-binary :all:``: unlike
``pip --platform``, it evaluates the packages' platform markers for the target), with the
packages Slicer 5.10 bundles pinned at Slicer's versions. Prints one line per platform; exits 1
naming the platform and the resolver's reason where no set of wheels exists.

Usage: python scripts/check_wheels.py [--python-version 3.12] [--slicer-packages FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "BrainImageNetAD"))

from BrainImageNetADLib.core import dependencies  # noqa: E402

#: The readers' platforms: name -> uv's target triple. macOS targets 14 (Sonoma): the oldest
#: release for which antspyx 0.6 ships Apple-silicon wheels.
PLATFORMS = {
    "Windows x86_64": "x86_64-pc-windows-msvc",
    "macOS arm64": "aarch64-apple-darwin",
    "macOS x86_64": "x86_64-apple-darwin",
    "Linux x86_64": "x86_64-manylinux_2_28",
}
MACOS_TARGET = "14.0"
SLICER_PACKAGES = ROOT / "Testing" / "slicer_python" / "slicer-5.10.0-python.txt"
#: The first torch built for NumPy 2 (older builds cannot exchange arrays with NumPy 2).
TORCH_FOR_NUMPY_2 = (2, 3)


def resolve(platform: str, python_version: str, requirements: list[str], no_deps: bool, constraints: Path) -> dict[str, str]:
    """The wheels ``uv`` resolves for ``requirements`` on ``platform``: name -> version (raises
    CalledProcessError with the resolver's output when there is none)."""
    with tempfile.TemporaryDirectory() as folder:
        listed = Path(folder) / "requirements.txt"
        listed.write_text("\n".join(requirements) + "\n")
        command = [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--only-binary", ":all:"]
        command += ["--python-version", python_version, "--python-platform", platform, "--constraint", str(constraints)]
        command += ["--no-deps"] if no_deps else []
        env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": MACOS_TARGET, "UV_NATIVE_TLS": "1"}
        output = subprocess.run([*command, str(listed)], check=True, capture_output=True, text=True, env=env).stdout
    return dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", output, flags=re.MULTILINE))


def torch_note(versions: dict[str, str]) -> str:
    """What a person must know about the torch that platform gets, or ''."""
    torch = tuple(int(part) for part in re.findall(r"\d+", versions.get("torch", "0.0"))[:2])
    numpy = int(versions.get("numpy", "0").split(".")[0])
    if torch < TORCH_FOR_NUMPY_2 and numpy >= 2:
        return f" (torch {versions['torch']} is the last build for this platform and was built for NumPy 1: not usable with NumPy {versions['numpy']})"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="Python of the Slicer release (default 3.12: Slicer 5.10)")
    parser.add_argument("--slicer-packages", type=Path, default=SLICER_PACKAGES, help="the packages Slicer bundles, name==version")
    args = parser.parse_args(argv)
    bundled = [line for line in args.slicer_packages.read_text().splitlines() if "==" in line and not line.startswith("#")]
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "slicer.txt"
        constraints.write_text("\n".join(bundled) + "\n")
        for name, platform in PLATFORMS.items():
            label = f"{name} ({platform}, Python {args.python_version})"
            try:
                versions = resolve(platform, args.python_version, dependencies.runtime_requirements(), False, constraints)
                versions |= resolve(platform, args.python_version, dependencies.no_deps_requirements(), True, constraints)
            except subprocess.CalledProcessError as error:
                reason = " ".join(line.strip() for line in error.stderr.splitlines() if line.strip())[:800]
                print(f"{label}: NO WHEELS: {reason}")
                failed = True
                continue
            print(
                f"{label}: {len(versions)} wheels, torch {versions.get('torch')}, numpy {versions.get('numpy')}, "
                f"antspyx {versions.get('antspyx')}{torch_note(versions)}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
