#!/usr/bin/env bash
# The prepared GPU check (issue 14): installs the package, then measures everything into OUT.
#   bash benchmarks/gpu.sh OUT [--data folder:PATH]    (about 3 minutes on one H200, measured)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/gpu.sh OUT [--data folder:PATH]}"; shift
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch
# A GPU box often has no package registry: when what the check needs is already installed, install the
# package alone (no downloads); otherwise fetch its dependencies.
if python3 -c "import numpy, PIL, yaml, tqdm, matplotlib, scipy, sklearn, pytest" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-build-isolation -e .
else
  python3 -m pip install -q -e ".[digits]" pytest
fi
nvidia-smi > /dev/null 2>&1 && mkdir -p "$OUT" && nvidia-smi > "$OUT/nvidia-smi.txt"
python3 benchmarks/gpu.py "$OUT" "$@"
