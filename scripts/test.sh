#!/usr/bin/env bash
# Set up (if needed), lint, check that wheels exist for the readers' platforms, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python scripts/check_wheels.py
# Two workers; the tests that share a preprocessed scan run in one of them (Testing/conftest.py).
.venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
