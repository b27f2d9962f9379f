#!/usr/bin/env bash
# The paper's Figures 3 and 5 at full scale in one GPU window (issue 23): installs the package, then trains
# fig3 and fig5 (preset paper) into OUT for 9 minutes and writes the report there. See paper_gpu.py's header
# for the plan and what it expects to finish.
#   bash benchmarks/paper-gpu.sh OUT [--budget SECONDS] [--data-root PATH]   (about 11 minutes on one H200)
#   bash benchmarks/paper-gpu.sh OUT --dry-run                              (every stage on the CPU, seconds)
# Run it again with the same OUT to resume what a time limit stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash benchmarks/paper-gpu.sh OUT [--dry-run] [--budget SECONDS] [--data-root PATH]}"; shift
source benchmarks/_install.sh
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python3 benchmarks/paper_gpu.py "$OUT" "$@"
