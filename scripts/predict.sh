#!/usr/bin/env bash
# Segment the lungs in your own CT: bash scripts/predict.sh INPUT [OUTPUT_DIR] [--model unet|resunet|PATH] ...
# Sets up .venv (first time) like run.sh. Paths are taken from the folder you run it in. See --help.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bash "$repo/scripts/setup.sh" >&2
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$repo/.venv/bin/python" -m lungseg.predict "$@"
