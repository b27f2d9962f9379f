"""The fold's cost against parameter count (ResNet-18 at widths 0.25, 0.5, 1): linear and memory-bound.

    python benchmarks/scaling.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, machine  # noqa: E402

from rbwa import fold_  # noqa: E402
from rbwa.models import build_model  # noqa: E402


def main() -> None:
    print(f"# scaling\n\nMachine: {machine()}\n")
    print("| width | parameters | fold ms | ns / parameter | copy floor ms | fold / floor | fold GB/s moved |")
    print("|---|---|---|---|---|---|---|")
    for width in (0.25, 0.5, 1.0):
        params = [p.detach() for p in build_model("resnet18", 10, width).parameters()]
        averages = [p.clone() for p in params]
        n = sum(p.numel() for p in params)
        t = interleaved({"fold": lambda a=averages, p=params: fold_(a, p, 0.01),
                         "floor": lambda a=averages, p=params: torch._foreach_copy_(a, p)}, rounds=40)
        moved = 5 * 4 * n  # lerp reads 2 and writes 1 tensor, copy reads 1 and writes 1: 5 float32 passes
        print(f"| {width} | {n / 1e6:.2f}M | {t['fold'] * 1e3:.3f} | {t['fold'] / n * 1e9:.3f} | "
              f"{t['floor'] * 1e3:.3f} | {t['fold'] / t['floor']:.2f}x | {moved / t['fold'] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
