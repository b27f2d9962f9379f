# Sourced by the prepared GPU scripts: install the package on a fresh GPU machine.
# A GPU box often has no package registry: when what the scripts need is already installed, install the
# package alone (no downloads); otherwise fetch its dependencies.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q torch
if python3 -c "import numpy, PIL, yaml, tqdm, matplotlib, scipy, sklearn, pytest" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-build-isolation -e .
else
  python3 -m pip install -q -e ".[digits]" pytest
fi
