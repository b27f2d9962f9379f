#!/usr/bin/env bash
# The prepared GPU check (issue 14): installs the package, then measures everything into OUT.
#   bash benchmarks/gpu.sh OUT [--data folder:PATH]    (about 3 minutes on one H200, measured)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/gpu.sh OUT [--data folder:PATH]}"; shift
source benchmarks/_install.sh
nvidia-smi > /dev/null 2>&1 && mkdir -p "$OUT" && nvidia-smi > "$OUT/nvidia-smi.txt"
python3 benchmarks/gpu.py "$OUT" "$@"
