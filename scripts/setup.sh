#!/usr/bin/env bash
# Set up BrainImageNet-AD on a fresh Debian/Ubuntu machine: system packages, a virtual
# environment in .venv with the pinned Python dependencies, and the project itself (editable).
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Run time needs none of these: mricron-data (reference images of some tests), EGL and Mesa
# (headless views of the web page), chromium (the page tests), strace (the test that no system
# file is read).
SYSTEM_PACKAGES=(mricron-data libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 chromium strace)
missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "error: need root (or sudo) to install: ${missing[*]}" >&2; exit 2; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.pinned.sha256
wanted="$(cat requirements/pinned.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "setup: installing Python dependencies (first run: several minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements/pinned.txt
  # The packages pyproject.toml marks as installed without their dependencies.
  mapfile -t no_deps < <(PYTHONPATH=BrainImageNetAD .venv/bin/python -m BrainImageNetADLib.core.dependencies no-deps)
  .venv/bin/python -m pip install -q --no-deps "${no_deps[@]}"
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$wanted" > "$stamp"
fi
echo "setup: ready (.venv)"
