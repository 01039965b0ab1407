#!/usr/bin/env bash
# Set up (if needed) and run the main job on the bundled sample case; prints result.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/brainimagenet-ad predict --sample --out "${1:-out/sample}"
cat "${1:-out/sample}/result.json"
