#!/usr/bin/env bash
# Set up (idempotent) and run the default pipeline: `dvc repro`. Extra args go to dvc repro.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
dvc repro "$@"
dvc metrics show
