"""Measured FLOPs per image of the paper's models, and what the `paper` preset costs on one GPU.

    python benchmarks/flops.py

Forward FLOPs are counted by torch.utils.flop_counter on a 32x32 input; a training step costs about
3x the forward pass (forward + backward for activations and weights). The GPU time assumes a
sustained fraction of the chip's dense bf16 peak; the fraction is an assumption, the FLOPs are not.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from rbwa.models import build_model
from rbwa.training.config import PRESETS

PEAK_BF16 = {"A100": 312e12, "H100 SXM": 989e12}  # dense bf16 tensor-core peak, FLOP/s (vendor data sheets)
UTILISATION = 0.3  # an assumption: small 32x32 convnets rarely sustain more than ~30% of peak


def forward_flops(name: str, classes: int = 10) -> int:
    model = build_model(name, classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


def main() -> None:
    paper = PRESETS["paper"]
    images = 50_000 * paper["epochs"]
    print("| model | forward GFLOPs / image | training GFLOPs / image | paper run (50 epochs x 50k) PFLOPs | "
          + " | ".join(f"min on {g} at {UTILISATION:.0%}" for g in PEAK_BF16) + " |")
    print("|---|---|---|---|" + "---|" * len(PEAK_BF16))
    for name in ("resnet18", "vgg16"):
        fwd = forward_flops(name)
        total = 3 * fwd * images
        minutes = [total / (peak * UTILISATION) / 60 for peak in PEAK_BF16.values()]
        print(f"| {name} | {fwd / 1e9:.3f} | {3 * fwd / 1e9:.3f} | {total / 1e15:.1f} | "
              + " | ".join(f"{m:.1f}" for m in minutes) + " |")
    print("\nEvaluation passes (test set each epoch, BatchNorm re-estimation for swa/ema) add up to ~1/3 more.")


if __name__ == "__main__":
    main()
