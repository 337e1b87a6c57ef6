#!/usr/bin/env bash
# Set up (idempotent) and run the default pipeline, `dvc repro`, which ends in paper/main.pdf.
# Extra args go to dvc repro.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
dvc repro "$@"
dvc metrics show --json > /dev/null  # fails loudly if a metrics file is unreadable
echo "reproduce: done. Paper: paper/main.pdf ($(pdfinfo paper/main.pdf | awk '/^Pages/ {print $2}') pages); dashboards: reports/runs/*/index.html"
