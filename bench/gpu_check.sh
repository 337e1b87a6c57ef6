#!/usr/bin/env bash
# The ladder's GPU check: the simulated Gemma 3 1B / Gemma Scope 2 262k chain
# (bench/bench_ladder_sim.py) on CUDA, with each stage's time and peak host and GPU memory beside
# darkmatter.plan's prediction, and the tests that need a GPU. About 10 minutes on one H100.
#
#   bash bench/gpu_check.sh [OUT_DIR]       # results in OUT_DIR (default bench/out/gpu_check)
#
# Commit what it measured: OUT_DIR/RESULTS-section.md replaces the "(CUDA)" section of
# bench/RESULTS.md. Without an NVIDIA GPU it says so in one line and exits 0 (CI never has one).
# A bare GPU machine with no package registry takes the packages it lacks as wheels in .whl/
# (README, "Hub ladder": the GPU check).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-${OUT:-bench/out/gpu_check}}"
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check"
  exit 0
fi
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if [ -d .whl ] && ! $py -c "import sae_lens" 2>/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# SAELens imports wandb at import time and never uses it here; wandb 0.31 needs protobuf 5-7. Where
# the machine's protobuf breaks it, an empty stand-in module lets SAELens import (the pipeline
# never logs to wandb: sae.train sets log_to_wandb=False).
if ! $py -c "import sae_lens" >/dev/null 2>&1; then
  mkdir -p /tmp/wandb-stand-in/wandb && : > /tmp/wandb-stand-in/wandb/__init__.py
  export PYTHONPATH=/tmp/wandb-stand-in${PYTHONPATH:+:$PYTHONPATH}
  $py -c "import sae_lens" || { echo "gpu_check: sae_lens does not import on this machine"; exit 1; }
  echo "gpu_check: wandb does not import here; an empty stand-in module is used" | tee -a "$out/gpu.txt"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
$py -m pytest -q -p no:cacheprovider tests/sae/test_devices.py 2>&1 | tail -3 | tee "$out/pytest.txt"
$py -m darkmatter.plan gemma-3-1b-262k --device cuda > "$out/plan.md" 2>&1
$py bench/bench_ladder_sim.py --device cuda --tokens 32768 --ram-gib 120 --work /tmp/ladder-sim \
  --out "$out/ladder_sim_cuda.json" --section-out "$out/RESULTS-section.md" 2>&1 | tee "$out/ladder_sim.log" | grep -v -i warn
rc=${PIPESTATUS[0]}
echo "gpu_check: bench_ladder_sim exit $rc"
exit "$rc"
