#!/usr/bin/env bash
# Set up (first time) and run the tests: unit and end-to-end tests (tests/), then nbval on the
# committed notebooks, re-executed in the quick configuration on the real slices.
# Real slices: $LUNGSEG_DATA_DIR, else ../shared/data/finding-lungs-in-ct-data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
shared="$(cd .. && pwd)/shared/data/finding-lungs-in-ct-data"
if [ -z "${LUNGSEG_DATA_DIR:-}" ] && [ -d "$shared/2d_images" ]; then export LUNGSEG_DATA_DIR="$shared"; fi
notebooks=()
if [ -n "${LUNGSEG_DATA_DIR:-}" ]; then
  rm -rf outputs/nbval
  .venv/bin/python -m lungseg.runner --quick --prepare-only --output-dir outputs/nbval \
    -p DATA_SOURCE folder -p DATA_DIR "$LUNGSEG_DATA_DIR"
  # The cells marked NBVAL_CHECK_OUTPUT hold the outputs of the data the notebooks were published with
  # (the 217 shared pairs). On other data (the full 267) nbval still runs every cell, without comparing.
  .venv/bin/python -m lungseg.nbval_data outputs/nbval/notebooks "$LUNGSEG_DATA_DIR"
  notebooks=(outputs/nbval/notebooks/*.ipynb --nbval-lax --nbval-current-env)
elif [ "${CI:-}" = "true" ]; then
  echo "CI=true but no real data: set LUNGSEG_DATA_DIR or put ../shared/data/finding-lungs-in-ct-data beside the repo" >&2
  exit 1
else
  echo "No real data found: real-data tests and nbval are skipped (set LUNGSEG_DATA_DIR to run them)."
fi
# The prepared notebooks lie in outputs/nbval/notebooks: their kernels find lungseg/ through PYTHONPATH.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m pytest tests "${notebooks[@]}" -p no:cacheprovider --durations=15 "$@"
