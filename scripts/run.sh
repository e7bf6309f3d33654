#!/usr/bin/env bash
# Set up (first time) and run the whole pipeline, notebooks 01-06, into outputs/.
# Options go to the runner: --quick, -p NAME VALUE, --only NN ..., --output-dir DIR (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m lungseg.runner "$@"
