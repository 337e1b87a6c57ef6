#!/usr/bin/env bash
# The wheels a bare GPU machine (Python 3.12, torch, transformers, no package registry) lacks to run
# the stages, at the versions of constraints.txt, into .whl/ (25 MiB; keep it out of git:
# `echo /.whl/ >> .git/info/exclude`). bench/gpu_check.sh installs them there. Each one was found by
# importing the stage modules on a stand-in of that machine: removing any breaks an import.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
packages="annotated-types better-abc datasets dill docstring_parser gguf multiprocess opentelemetry-api platformdirs
pydantic pydantic_core python-picard sae-lens simple-parsing transformer-lens typing-inspection wandb"
pins=()
for p in $packages; do
  pin=$(grep -i -E "^${p//[-_]/[-_]}==" constraints.txt) || { echo "gpu_wheels: $p is not pinned in constraints.txt"; exit 1; }
  pins+=("$pin")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
du -sh .whl
