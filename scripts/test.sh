#!/usr/bin/env bash
# Set up (if needed), lint, check that wheels exist for the readers' platforms, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python scripts/check_wheels.py
# Two workers, each file in one of them; scans that several files read are preprocessed once (Testing/conftest.py).
.venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
